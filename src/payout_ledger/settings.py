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

A PostgreSQL URL may name a schema with ``?schema=payouts`` (a name SQL takes
unquoted: opening refuses any other with a ``ConfigurationError``) and a Unix socket
directory with ``?host=/run/postgresql``; special characters in its user name or
password are percent-encoded (``p%40ss`` for ``p@ss``). An SQLite URL names a
plain file: URI-style URLs (``sqlite:///file:x.db?mode=memory``, any query) are
refused, as each ledger would open a private store of its own.

Secrets never show: ``repr()``, ``str()`` and ``model_dump()``/``model_dump_json()``
of the settings give the store URL through [`redact_url`][payout_ledger.settings.redact_url]
and the Stripe key, webhook secrets and cipher key as ``SecretStr``
(``'**********'``). Invalid settings raise
[`ConfigurationError`][payout_ledger.ConfigurationError] naming the setting, its
``PAYOUT_LEDGER_`` variable and the reason, never the value given.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from pydantic import (
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    computed_field,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from payout_ledger.errors import ConfigurationError

__all__ = [
    "STRIPE_API_VERSION",
    "AnchorSinkKind",
    "LedgerSettings",
    "anchor_sink_parts",
    "livemode_of_key",
    "redact_url",
    "shown_anchor_sink",
    "store_environment",
]

Environment = Literal["development", "test", "staging", "production"]

STRIPE_KEY_RETENTION = 24 * 3600
"""Stripe may prune an idempotency key once it is this many seconds old."""
SEND_MARGIN = 3600
"""Kept free below the key retention: Stripe may still be executing a request
after the client gave up on it, and clocks run at slightly different rates."""
MAX_STRIPE_TIMEOUT = 600.0
"""The longest accepted ``stripe_timeout`` (Stripe's own SDKs use 80 s)."""


STRIPE_API_VERSION = "2026-10-28.endive"
"""The Stripe API version the library is built and tested against: the version the
installed stripe SDK (16.x) is generated for. The gateway sends it as
``Stripe-Version`` on every request, and a Stripe event of another version has no
effect on the books unless it is listed in ``stripe_accepted_api_versions``
(see the "API versions" section of docs/stripe.md)."""

_API_VERSION = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(\.[a-z]+)?$"

ENV_PREFIX = "PAYOUT_LEDGER_"
"""The prefix of the environment variables ``LedgerSettings()`` reads."""


CHECKPOINT_KEY_LENGTH = 16
"""The fewest characters a checkpoint key may have."""


class LedgerSettings(BaseSettings):
    """Everything the ledger can be configured with.

    Raises [`ConfigurationError`][payout_ledger.ConfigurationError] (never
    pydantic's ``ValidationError``, which quotes the input) when a setting is
    not acceptable: the message names each setting and its ``PAYOUT_LEDGER_``
    variable and says why, without the value.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    store_url: str = Field(default="sqlite:///payout_ledger.db", repr=False)
    """Where events are stored: ``memory://``, ``sqlite:///...`` or ``postgresql://...``.
    Shown (repr, str, dumps) only through [`redact_url`][payout_ledger.settings.redact_url]."""

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

    stripe_accepted_api_versions: tuple[
        Annotated[str, StringConstraints(pattern=_API_VERSION)], ...
    ] = ()
    """Stripe API versions, besides ``stripe_api_version``, whose events the host has
    checked and lets act on the books (``["2025-09-30.clover"]``, in JSON in the
    environment). An event of any other version is recorded for audit and changes
    nothing; see the "API versions" section of docs/stripe.md."""

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

    payability_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    """Seconds a ledger trusts that a connected account it read as payable (or
    never reported) still is, without reading the account's record again for each
    release; 0 reads it for every release. What this ledger records about the
    account is seen by its next release; what another ledger records (another
    process's, or another ``PayoutLedger`` in this one), within this window.
    Meanwhile the worst a stale "payable" does is what happens for an account
    the ledger knows nothing of: one transfer request that Stripe refuses,
    recorded with the account's report. An account known to be unpayable is
    read by every release."""

    cipher_key: SecretStr | None = None
    """Encrypt stored events at rest: a base64 AES key of 16, 24 or 32 bytes, made with
    ``eventsourcing.cryptography.AESCipher.create_key(32)``.
    Events are then stored with eventsourcing's AES-GCM cipher
    (``eventsourcing.cryptography:AESCipher``); every process needs the same key
    and a store must be encrypted from its first event. Never logged."""

    checkpoint_key: SecretStr | None = Field(default=None, min_length=CHECKPOINT_KEY_LENGTH)
    """Key the digest of ``audit`` and ``verify`` checkpoints (HMAC-SHA-256): text of
    16 characters or more, made with ``secrets.token_hex(16)``. A checkpoint
    rewritten without it is refused, and the run reads the whole log. Give it to
    the auditor's runs only, not to the processes that write the log. Never logged."""

    read_model_table: str = Field(
        default="payout_ledger_payouts", pattern=r"^[a-z_][a-z0-9_]{0,40}$"
    )
    """The read model's table (one row per event service), in the events' database;
    its tracking table is this name plus ``_tracking``."""

    # Health (``PayoutLedger.health()``, the ASGI health route): None turns a check off.
    health_in_flight_threshold: float | None = Field(default=900.0, gt=0)
    """Seconds: health fails while an attempt (transfer or reversal) has been in
    flight longer than this. A release settles in seconds; the maintenance worker
    resumes what is left in flight, so an old one means the worker is not working."""

    health_projection_lag_threshold: int | None = Field(default=10_000, ge=0)
    """Events: health fails while the read model is more than this many payout
    events behind the log (a read model never created is not checked)."""

    health_seal_age_threshold: float | None = Field(default=86_400.0, gt=0)
    """Seconds: health fails while an event has waited longer than this for a seal
    (the maintenance worker seals every cycle). A quiet log with nothing to seal
    is healthy however old its newest seal."""

    worker_interval: float = Field(default=60.0, gt=0, le=86400)
    """Seconds between two cycles of the maintenance worker (``payout-ledger worker``)."""

    worker_resume_after: float = Field(default=300.0, ge=0, le=86400)
    """Seconds a payout's (or a reversal's) in-flight claim must be old before the
    worker resumes it: a younger one most likely belongs to a release still
    running. The claim's age compares the claiming host's clock with the worker's,
    so a claim is also due once the worker has seen it in flight this long on its
    own monotonic clock: a worker whose clock is behind never leaves it stuck.
    Resuming is safe at any age; this only saves needless Stripe calls."""

    worker_reconcile_window: float = Field(default=26 * 3600, ge=0, le=90 * 86400)
    """Seconds back from now that each worker cycle reconciles with Stripe (the
    last day and a margin by default); 0 turns the worker's reconcile off."""

    worker_lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    """Within how many seconds a worker that died (or lost its database) is
    replaced as leader: followers try to lead every third of it, and the
    leader's lock connection has TCP keepalives that give up within it."""

    worker_anchor_sink: str | None = Field(default=None, repr=False)
    """Where the worker writes each new seal's digest: ``file:/path/anchors.jsonl``
    (one JSON line per seal, appended and synced) or ``command:program args``
    (run without a shell, the seal as JSON on its stdin). None: seals are not
    anchored by the worker. Shown only as its kind and path or program."""

    # Bulk releases (``PayoutLedger.release_many``) under a rate budget shared in the store.
    bulk_rate_limit: float = Field(default=25.0, gt=0, le=10_000)
    """Requests per second Stripe allows the endpoint bulk releases use (Stripe's
    default per endpoint is 25; live mode allows 100 in total, sandboxes 25)."""

    bulk_rate_share: float = Field(default=0.9, gt=0, le=1)
    """The share of ``bulk_rate_limit`` that all bulk releases together may use,
    every process and host included; the rest is left to live traffic (charges)."""

    bulk_rate_budget: str = Field(default="stripe", pattern=r"^[a-z0-9_.:-]{1,64}$")
    """The name of the shared rate budget: ledgers that call the same Stripe
    account share one (its row in the store's ``payout_ledger_rate_budget`` table), and
    should all be given the same ``bulk_rate_limit`` and ``bulk_rate_share``."""

    bulk_backoff_max: float = Field(default=30.0, ge=0.5, le=600)
    """The longest back-off, in seconds, of the whole budget after a 429: Stripe's
    ``Retry-After`` when it sends one (capped at this), else exponential from 0.5 s
    with jitter."""

    bulk_rate_limit_retries: int = Field(default=6, ge=0, le=50)
    """How many times one request answered 429 is sent again (same idempotency key,
    after the budget's back-off, only while its send window is open)."""

    bulk_resume_rounds: int = Field(default=3, ge=0, le=50)
    """How many times a bulk release still left in flight by a 429 is resumed
    (asked of Stripe, then sent again with its key) before it is answered
    ``not_executed``."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def stripe_api_version(self) -> str:
        """The Stripe API version the gateway asks for and the ledger's events are
        read with: [`STRIPE_API_VERSION`][payout_ledger.settings.STRIPE_API_VERSION]
        (read-only, shown wherever settings are shown)."""
        return STRIPE_API_VERSION

    if not TYPE_CHECKING:  # type checkers keep pydantic's typed signature

        def __init__(self, **values: Any) -> None:
            # pydantic-settings still reads PAYOUT_LEDGER_* variables; only its errors,
            # which quote the input, are replaced. Raised outside the except block so
            # that the exception keeps no context holding the values.
            error: ConfigurationError | None = None
            try:
                super().__init__(**values)
            except ValidationError as exc:
                error = _settings_error(exc)
            except SettingsError as exc:
                error = _source_error(exc)
            if error is not None:
                raise error

    def __setattr__(self, name: str, value: Any) -> None:
        # Settings are frozen: pydantic's refusal would quote the value given.
        error: ConfigurationError | None = None
        try:
            super().__setattr__(name, value)
        except ValidationError:
            error = ConfigurationError(f"settings are frozen: {name[:40]} cannot be changed")
        if error is not None:
            raise error

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "store_url", redact_url(self.store_url)
        yield from super().__repr_args__()
        if self.worker_anchor_sink is not None:
            yield "worker_anchor_sink", shown_anchor_sink(self.worker_anchor_sink)

    @field_serializer("store_url")
    def _redacted_store_url(self, url: str) -> str:
        return redact_url(url)

    @field_validator("store_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        scheme = _split(url).scheme
        if scheme not in {"memory", "sqlite", "postgresql", "postgres"}:
            raise ValueError("the scheme must be memory://, sqlite:/// or postgresql://")
        userinfo, at, _ = url.partition("://")[2].rpartition("@")
        if scheme != "sqlite" and at and any(c in userinfo for c in "/?#"):
            # An unencoded '/', '?' or '#' before the last '@' cuts the password in two.
            raise ValueError(_PERCENT_ENCODE)
        return url

    @field_validator("worker_anchor_sink")
    @classmethod
    def _anchor_sink_form(cls, sink: str | None) -> str | None:
        if sink is not None:
            anchor_sink_parts(sink)
        return sink

    @field_serializer("worker_anchor_sink")
    def _shown_anchor_sink(self, sink: str | None) -> str | None:
        return None if sink is None else shown_anchor_sink(sink)

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


_PERCENT_ENCODE = (
    "the URL's user name or password has an unencoded @, /, ? or #: percent-encode "
    "them (%40, %2F, %3F, %23)"
)


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("not a URL (check the host and port)") from None
    return parts


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _settings_error(exc: ValidationError) -> ConfigurationError:
    """What is wrong with each setting: its name, variable and reason, never its value."""
    reasons = []
    for error in exc.errors():
        loc = error["loc"]
        field = str(loc[0]) if loc else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        if isinstance(value, str) and len(value) >= 8 and value in message:
            message = message.replace(value, "***")  # never quote what was given
        if not field:
            reasons.append(f"settings: {message}")
        elif field in LedgerSettings.model_fields:
            reasons.append(f"{field} ({_env_name(field)}): {message}")
        else:
            reasons.append(f"unknown setting {field[:40]!r}: {message}")
    return ConfigurationError("; ".join(reasons))


def _source_error(exc: SettingsError) -> ConfigurationError:
    found = re.search(r'field "([a-z_]+)"', str(exc))
    field = found.group(1) if found else None
    if field is None or field not in LedgerSettings.model_fields:
        return ConfigurationError("a PAYOUT_LEDGER_ environment variable cannot be parsed")
    return ConfigurationError(
        f"{field} ({_env_name(field)}): cannot be parsed; a list is written in JSON, "
        'for example ["whsec_..."]'
    )


AnchorSinkKind = Literal["file", "command"]


def anchor_sink_parts(sink: str) -> tuple[AnchorSinkKind, list[str]]:
    """``worker_anchor_sink`` taken apart: ``("file", [path])`` or ``("command", argv)``.

    Raises ``ValueError`` saying what is wrong, never quoting the value (a
    command line may hold a token).
    """
    kind, colon, rest = sink.partition(":")
    if not colon or kind not in ("file", "command"):
        raise ValueError("an anchor sink is file:/path/anchors.jsonl or command:program args")
    if "\x00" in rest or not rest.strip():
        raise ValueError(
            f"an anchor sink {kind}: needs a {'path' if kind == 'file' else 'program'}"
        )
    if kind == "file":
        return "file", [rest]
    try:
        argv = shlex.split(rest)
    except ValueError:
        raise ValueError(
            "the anchor sink's command cannot be split into arguments (an unclosed quote?)"
        ) from None
    if not argv:
        raise ValueError("an anchor sink command: needs a program")
    return "command", argv


def shown_anchor_sink(sink: str) -> str:
    """The sink as settings show it: a file's path, or a command's program without its
    arguments (they may hold a token)."""
    try:
        kind, parts = anchor_sink_parts(sink)
    except ValueError:
        return "***"
    if kind == "file":
        return f"file:{parts[0]}"
    return f"command:{parts[0]}" + (" ***" if len(parts) > 1 else "")


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
    # eventsourcing opens SQLITE_DBNAME as a URI when it has "file:" or "mode=memory":
    # each ledger would then get a private (often empty, in-memory) store.
    if "?" in path or "#" in path or path.startswith("file:") or "mode=memory" in path:
        raise ConfigurationError(
            "an SQLite store URL names a plain file (sqlite:///relative.db or "
            "sqlite:////abs.db), without a query, fragment or file: URI"
        )
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
    try:
        parts = _split(settings.store_url)
    except ValueError:
        raise ConfigurationError(
            f"store_url is not a PostgreSQL URL: {redact_url(settings.store_url)}"
        ) from None
    query = dict(parse_qsl(parts.query))
    host = query.pop("host", None) or parts.hostname
    schema = query.pop("schema", None)
    dbname = unquote(parts.path.lstrip("/"))
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
        "POSTGRES_USER": unquote(parts.username or "") or "postgres",
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_LOCK_TIMEOUT": str(settings.postgres_lock_timeout),
        "POSTGRES_POOL_SIZE": str(settings.postgres_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.postgres_max_overflow),
        "POSTGRES_CONNECT_TIMEOUT": str(settings.postgres_connect_timeout),
    }
    if schema:
        env["POSTGRES_SCHEMA"] = schema
    return env


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe for logs and errors.

    The password of the authority (``user:***@host``, up to the last ``@`` even
    when an unencoded ``/``, ``?`` or ``#`` precedes it) and any ``password``
    query parameter are hidden; anything else is left as written.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url and "password" not in url.lower() else "<not a URL>"
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{after}"
    base, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        pairs = [
            f"{pair.partition('=')[0]}=***"
            if unquote(pair.partition("=")[0]).lower() == "password"
            else pair
            for pair in query.split("&")
        ]
        rest = f"{base}?{'&'.join(pairs)}{hash_}{fragment}"
    return f"{scheme}://{rest}"
