"""No secret is ever shown: every secret against every surface the library has.

Secrets: the Stripe API key, a webhook signing secret, the cipher key and the
database password (with characters a URL must percent-encode, checked both
encoded and decoded). Surfaces: ``repr()``/``str()``/dumps of the settings, the
ledger (and ``ledger.env``), the gateway and the webhook handler; the message,
``args``, chained causes and traceback of every settings, URL and key error;
every log record at DEBUG (all loggers: the library's, eventsourcing's,
psycopg's, the Stripe SDK's); the output of ``payout-ledger`` commands run with
the secrets in ``PAYOUT_LEDGER_*`` variables, working and failing; and the bytes
of every stored row (PostgreSQL) and of the whole SQLite file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.adapters.projection import run_projection
from payout_ledger.audit import audit_ledger, export_events, verify_ledger
from payout_ledger.cli import app
from payout_ledger.settings import STRIPE_API_VERSION, store_environment
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.stripe.webhooks import WebhookHandler
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe

STRIPE_KEY = "sk_test_STRIPEKEYsecret7f3a9c"
WEBHOOK_SECRET = "whsec_WEBHOOKsecret7f3a9c"
CIPHER_KEY = base64.b64encode(hashlib.sha256(b"CIPHERsecret7f3a9c").digest()).decode()
DB_PASSWORD = "pw/DBsecret7f3a9c@x?y#z:w"
DB_PASSWORD_IN_URL = quote(DB_PASSWORD, safe="")
CHECKPOINT_KEY = "QZKEYsecret7f3a9cHMAC"

SECRETS: dict[str, tuple[str, ...]] = {
    "Stripe API key": (STRIPE_KEY, "STRIPEKEYsecret7f3a9c"),
    "webhook secret": (WEBHOOK_SECRET, "WEBHOOKsecret7f3a9c"),
    "cipher key": (CIPHER_KEY, CIPHER_KEY),
    "database password": (DB_PASSWORD, DB_PASSWORD_IN_URL, "DBsecret7f3a9c"),
    "checkpoint key": (CHECKPOINT_KEY, CHECKPOINT_KEY),
}
"""Each secret: its forms, then its distinctive core (the last item)."""

WINDOW = 8
"""A leak of any 8 characters in a row of a secret's core counts (pydantic, for
one, shortens long input values to their two ends)."""


def _fragments(forms: tuple[str, ...]) -> set[bytes]:
    core = forms[-1]
    windows = {core[i : i + WINDOW] for i in range(len(core) - WINDOW + 1)}
    return {f.encode() for f in (*forms, *windows)}


FRAGMENTS = {name: _fragments(forms) for name, forms in SECRETS.items()}


def leaked(text: str | bytes) -> list[str]:
    """The secrets (by name) any of whose fragments appear in ``text``."""
    data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
    return [name for name, fragments in FRAGMENTS.items() if any(f in data for f in fragments)]


def exception_texts(exc: BaseException) -> list[str]:
    """What an exception can show: message, repr, args, traceback, for it and its chain."""
    texts, seen = [], set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        texts += [str(getattr(current, name, "")) for name in ("url", "reason", "message")]
        pending += [current.__cause__, current.__context__]
    texts.append("".join(traceback.format_exception(exc)))
    return texts


# -- the world: a ledger on PostgreSQL and on SQLite, with every secret -----------------


@dataclass
class World:
    settings: LedgerSettings
    ledger: PayoutLedger
    gateway: StripeTransferGateway
    handler: WebhookHandler
    sqlite_settings: LedgerSettings
    sqlite_ledger: PayoutLedger
    sqlite_file: Path
    postgres_url: str
    schema: str
    conninfo: str
    fake: FakeStripe
    records: list[logging.LogRecord] = field(default_factory=list)
    errors: dict[str, BaseException] = field(default_factory=dict)


class _Capture(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


LOGGERS = ("", "payout_ledger", "eventsourcing", "psycopg", "psycopg.pool", "stripe",
           "urllib3", "httpx", "httpcore", "asyncio")  # fmt: skip


def _with_credentials(server_url: str, user: str, schema: str) -> str:
    parts = urlsplit(server_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = dict(parse_qsl(parts.query))  # keeps ?host=/socket/dir (embedded PostgreSQL)
    query["schema"] = schema
    return urlunsplit(
        parts._replace(netloc=f"{user}:{DB_PASSWORD_IN_URL}@{host}", query=urlencode(query))
    )


def _conninfo(server_url: str) -> str:
    parts = urlsplit(server_url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    return urlunsplit(parts._replace(query=urlencode(query)))


def _sign(body: bytes, secret: str) -> str:
    stamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


@pytest.fixture(scope="module")
def world(postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Everything built and exercised once, with every log record captured at DEBUG."""
    records: list[logging.LogRecord] = []
    capture = _Capture(records)
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    root = logging.getLogger()
    root.addHandler(capture)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    role = f"secret_{uuid.uuid4().hex[:10]}"
    conninfo = _conninfo(postgres_server_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(DB_PASSWORD)
            )
        )
        conn.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(role), sql.Identifier(role)
            )
        )
    folder = tmp_path_factory.mktemp("secrets")
    fake = FakeStripe(api_key=STRIPE_KEY)
    fake.start()
    try:
        account = str(fake.client().v1.accounts.create({"type": "express"}).id)
        providers = InMemoryProviderDirectory(
            [ServiceProvider(id="prov_1", user_id="user_1", stripe_account_id=account)]
        )
        common: dict[str, Any] = {
            "stripe_api_key": STRIPE_KEY,
            "stripe_api_base": fake.url,
            "stripe_webhook_secrets": (WEBHOOK_SECRET,),
            "cipher_key": CIPHER_KEY,
            "checkpoint_key": CHECKPOINT_KEY,
        }
        url = _with_credentials(postgres_server_url, role, role)
        settings = LedgerSettings(store_url=url, **common)
        gateway = StripeTransferGateway.from_settings(settings)
        ledger = PayoutLedger(settings=settings, providers=providers, gateway=gateway)
        handler = WebhookHandler.from_settings(ledger, settings)
        sqlite_file = folder / "payouts.db"
        sqlite_settings = LedgerSettings(store_url=f"sqlite:///{sqlite_file}", **common)
        sqlite_ledger = PayoutLedger(
            settings=sqlite_settings,
            providers=providers,
            gateway=StripeTransferGateway.from_settings(sqlite_settings),
        )
        built = World(
            settings, ledger, gateway, handler, sqlite_settings, sqlite_ledger, sqlite_file,
            url, role, conninfo, fake, records,
        )  # fmt: skip
        _exercise(built)
        yield built
        ledger.close()
        sqlite_ledger.close()
    finally:
        fake.stop()
        root.removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _exercise(world: World) -> None:
    """Releases through Stripe, webhooks (good and bad), audit, export, projection."""
    for ledger in (world.ledger, world.sqlite_ledger):
        for service in ("es_1", "es_2"):
            assert ledger.release_payment(
                {"event_service_id": service, "provider_id": "prov_1",
                 "amount": {"amount": 5000, "currency": "usd"}}
            ).success  # fmt: skip
        run_projection(ledger)
        audit_ledger(ledger)
        verify_ledger(ledger)
        ledger.seal()
        export_events(ledger, io.StringIO())
    event = {
        "id": "evt_secret_1",
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "type": "payment_intent.succeeded",
        "livemode": False,
        "data": {"object": {"id": "pi_1", "amount": 5000, "currency": "usd", "metadata": {}}},
    }
    body = json.dumps(event).encode()
    good = world.handler.handle(body, {"stripe-signature": _sign(body, WEBHOOK_SECRET)})
    assert good.status == 200, good
    bad = world.handler.handle(body, {"stripe-signature": _sign(body, "whsec_other")})
    assert bad.status == 403
    for name, make in ERRORS.items():
        try:
            make(world)
        except Exception as exc:
            world.errors[name] = exc


# -- settings, URL and key errors ----------------------------------------------------------


def _settings_with_env(env: dict[str, str]) -> Callable[[World], object]:
    def make(world: World) -> object:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            return LedgerSettings()

    return make


def _ledger_at(url: str, **settings: Any) -> Callable[[World], object]:
    def make(world: World) -> object:
        return PayoutLedger(
            settings=LedgerSettings(store_url=url, stripe_enabled=False, **settings),
            providers=InMemoryProviderDirectory(),
        )

    return make


PW = DB_PASSWORD_IN_URL
ERRORS: dict[str, Callable[[World], object]] = {
    "unsupported scheme": lambda w: LedgerSettings(store_url=f"mysql://u:{PW}@h/db"),
    "port not a number": lambda w: LedgerSettings(store_url=f"postgresql://u:{PW}@h:port/db"),
    "unencoded password": lambda w: LedgerSettings(store_url=f"postgresql://u:{DB_PASSWORD}@h/db"),
    "password in a query": lambda w: store_environment(
        LedgerSettings(store_url=f"postgresql://h/db?password={PW}&sslmode=require")
    ),
    "sqlite query": lambda w: store_environment(
        LedgerSettings(store_url=f"sqlite:///x.db?password={PW}")
    ),
    "no host": lambda w: store_environment(LedgerSettings(store_url=f"postgresql://u:{PW}@/")),
    "another setting wrong": lambda w: LedgerSettings(
        store_url=w.postgres_url,
        stripe_timeout="x",
        stripe_api_key=STRIPE_KEY,
        cipher_key=CIPHER_KEY,
        stripe_webhook_secrets=(WEBHOOK_SECRET,),
    ),
    "key of the wrong type": lambda w: LedgerSettings(stripe_api_key=[STRIPE_KEY]),
    "cipher key of the wrong type": lambda w: LedgerSettings(cipher_key={"key": CIPHER_KEY}),
    "checkpoint key too short": lambda w: LedgerSettings(checkpoint_key=CHECKPOINT_KEY[:15]),
    "checkpoint key too short, given to a run": lambda w: audit_ledger(
        w.ledger, checkpoint=w.sqlite_file.with_suffix(".c"), checkpoint_key=CHECKPOINT_KEY[:15]
    ),
    "webhook secrets as one str": lambda w: LedgerSettings(stripe_webhook_secrets=WEBHOOK_SECRET),
    "webhook secret of the wrong type": lambda w: LedgerSettings(
        stripe_webhook_secrets=[WEBHOOK_SECRET, 5]
    ),
    "unknown setting": lambda w: LedgerSettings(stripe_secret=STRIPE_KEY),
    "assigning a frozen setting": lambda w: setattr(w.sqlite_settings, "cipher_key", CIPHER_KEY),
    "env: webhook secrets not JSON": _settings_with_env(
        {"PAYOUT_LEDGER_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET}
    ),
    "env: webhook secrets broken JSON": _settings_with_env(
        {"PAYOUT_LEDGER_STRIPE_WEBHOOK_SECRETS": f'["{WEBHOOK_SECRET}"'}
    ),
    "env: unsupported URL": _settings_with_env({"PAYOUT_LEDGER_STORE_URL": f"mysql://u:{PW}@h/db"}),
    "env: a key where a number goes": _settings_with_env(
        {"PAYOUT_LEDGER_STRIPE_TIMEOUT": STRIPE_KEY, "PAYOUT_LEDGER_CLAIM_ATTEMPTS": CIPHER_KEY}
    ),
    "env: password as the environment": _settings_with_env(
        {"PAYOUT_LEDGER_ENVIRONMENT": DB_PASSWORD}
    ),
    "unreachable database": _ledger_at(f"postgresql://u:{PW}@127.0.0.1:1/db"),
    "missing schema": lambda w: PayoutLedger(
        settings=LedgerSettings(
            store_url=w.postgres_url.replace(f"schema={w.schema}", "schema=nope"),
            stripe_enabled=False,
        ),
        providers=InMemoryProviderDirectory(),
    ),
    "cipher key not base64": _ledger_at("memory://", cipher_key=f"!{CIPHER_KEY}!"),
    "cipher key of the wrong size": _ledger_at("memory://", cipher_key=CIPHER_KEY[:-8]),
    "wrong cipher key": lambda w: PayoutLedger(
        settings=LedgerSettings(
            store_url=w.sqlite_settings.store_url,
            stripe_enabled=False,
            cipher_key=base64.b64encode(b"k" * 32).decode(),
        ),
        providers=InMemoryProviderDirectory(),
    ),
    "no cipher key on an encrypted store": lambda w: PayoutLedger(
        settings=LedgerSettings(store_url=w.postgres_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory(),
    ),
    "publishable key": lambda w: StripeTransferGateway("pk_" + STRIPE_KEY[3:]),
    "key with a newline": lambda w: StripeTransferGateway(STRIPE_KEY + "\n"),
    "key as bytes": lambda w: StripeTransferGateway(STRIPE_KEY.encode()),  # type: ignore[arg-type]
    "test key in production": lambda w: PayoutLedger(
        settings=LedgerSettings(
            store_url=f"postgresql://u:{PW}@127.0.0.1:1/db",
            environment="production",
            stripe_api_key=STRIPE_KEY,
            cipher_key=CIPHER_KEY,
        ),
        providers=InMemoryProviderDirectory(),
        gateway=w.gateway,
    ),
    "webhook secret with a space": lambda w: WebhookHandler(
        w.ledger, secrets=[f" {WEBHOOK_SECRET}"]
    ),
    "webhook secrets as one str (handler)": lambda w: WebhookHandler(
        w.ledger,
        secrets=WEBHOOK_SECRET,
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_never_show_a_secret(world: World, case: str) -> None:
    """Every case raises, and no message, arg, cause or traceback holds a secret."""
    assert case in world.errors, f"{case}: nothing was raised"
    for text in exception_texts(world.errors[case]):
        assert leaked(text) == [], f"{case}: {text}"


def test_settings_errors_are_configuration_errors_naming_the_setting(world: World) -> None:
    from payout_ledger import ConfigurationError

    settings_cases = [c for c in ERRORS if "setting" in c or c.startswith("env:")]
    for case in settings_cases:
        assert isinstance(world.errors[case], ConfigurationError), case
    assert "PAYOUT_LEDGER_STRIPE_TIMEOUT" in str(world.errors["another setting wrong"])
    assert "stripe_webhook_secrets" in str(world.errors["env: webhook secrets not JSON"])
    assert "store_url" in str(world.errors["unsupported scheme"])


# -- reprs, str, dumps and the environment ---------------------------------------------------


SURFACES: dict[str, Callable[[World], str]] = {
    "repr(settings)": lambda w: repr(w.settings),
    "str(settings)": lambda w: str(w.settings),
    "settings.model_dump_json()": lambda w: w.settings.model_dump_json(),
    "settings.model_dump()": lambda w: repr(w.settings.model_dump()),
    "settings.model_dump(mode='json')": lambda w: repr(w.settings.model_dump(mode="json")),
    "repr(ledger)": lambda w: repr(w.ledger),
    "str(ledger)": lambda w: str(w.ledger),
    "ledger.env": lambda w: repr(w.ledger.env) + str(dict(w.ledger.env)),
    "ledger.factory.env": lambda w: repr(w.ledger.factory.env),
    "sqlite ledger.env": lambda w: repr(w.sqlite_ledger.env),
    "repr(gateway)": lambda w: repr(w.gateway),
    "str(gateway)": lambda w: str(w.gateway),
    "repr(handler)": lambda w: repr(w.handler),
    "str(handler)": lambda w: str(w.handler),
}


@pytest.mark.parametrize("surface", list(SURFACES))
def test_reprs_and_dumps_never_show_a_secret(world: World, surface: str) -> None:
    assert leaked(SURFACES[surface](world)) == []


def test_the_secrets_are_really_there(world: World) -> None:
    """The checks above would catch a leak: the secrets are in use, and findable."""
    assert leaked(f"{STRIPE_KEY} {WEBHOOK_SECRET} {CIPHER_KEY} {DB_PASSWORD_IN_URL}") == list(
        SECRETS
    )
    assert world.settings.stripe_api_key is not None
    assert world.settings.stripe_api_key.get_secret_value() == STRIPE_KEY
    assert DB_PASSWORD_IN_URL in world.settings.store_url
    assert world.ledger.find_payout("es_1") is not None
    assert world.ledger.mapper.cipher is not None


# -- logs ----------------------------------------------------------------------------------


def test_no_log_record_at_debug_shows_a_secret(world: World) -> None:
    """Every record of every logger while the world was built and used, errors included."""
    assert any(r.name.startswith("psycopg") for r in world.records)
    assert any(r.name.startswith("payout_ledger") for r in world.records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in world.records:
        assert leaked(formatter.format(record)) == [], record.name
        assert leaked(repr(record.args)) == [], record.name


# -- stored events ---------------------------------------------------------------------------


def test_no_stored_row_holds_a_secret_postgresql(world: World) -> None:
    """Every row of every table in the ledger's schema, as bytes."""
    with psycopg.connect(world.conninfo) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (world.schema,)
            )
        ]
        assert "payoutledger_events" in tables
        for table in tables:
            rows = conn.execute(
                sql.SQL("SELECT * FROM {}.{}").format(
                    sql.Identifier(world.schema), sql.Identifier(table)
                )
            ).fetchall()
            for row in rows:
                data = b"".join(
                    v if isinstance(v, bytes) else str(v).encode() for v in row if v is not None
                )
                assert leaked(data) == [], table


def test_no_byte_of_the_sqlite_file_holds_a_secret(world: World) -> None:
    world.sqlite_ledger.close()
    files = [p for p in world.sqlite_file.parent.iterdir() if p.name.startswith("payouts.db")]
    assert files
    for path in files:
        assert leaked(path.read_bytes()) == [], path.name


# -- the command line --------------------------------------------------------------------------


def _cli_env(world: World, **overrides: str) -> dict[str, str]:
    env = {
        "PAYOUT_LEDGER_STORE_URL": world.postgres_url,
        "PAYOUT_LEDGER_STRIPE_API_KEY": STRIPE_KEY,
        "PAYOUT_LEDGER_STRIPE_API_BASE": world.fake.url,
        "PAYOUT_LEDGER_STRIPE_WEBHOOK_SECRETS": json.dumps([WEBHOOK_SECRET]),
        "PAYOUT_LEDGER_CIPHER_KEY": CIPHER_KEY,
        "PAYOUT_LEDGER_CHECKPOINT_KEY": CHECKPOINT_KEY,
    }
    return {**env, **overrides}


CLI_CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "audit (working)": (["audit"], {}),
    "verify (working)": (["verify"], {}),
    "project (working)": (["project"], {}),
    "export (working)": (["export"], {}),
    "resume (working)": (["resume"], {}),
    "reconcile (working)": (["reconcile", "--service", "es_1"], {}),
    "audit --json (working)": (["audit", "--json"], {}),
    "audit --checkpoint (working)": (["audit", "--checkpoint", "{tmp}/audit.checkpoint"], {}),
    "verify --checkpoint (working)": (["verify", "--checkpoint", "{tmp}/verify.checkpoint"], {}),
    "audit: checkpoint key too short": (
        ["audit", "--checkpoint", "{tmp}/audit.checkpoint"],
        {"PAYOUT_LEDGER_CHECKPOINT_KEY": CHECKPOINT_KEY[:15]},
    ),
    "audit: unsupported URL": (
        ["audit"],
        {"PAYOUT_LEDGER_STORE_URL": f"mysql://u:{PW}@h/db"},
    ),
    "resume: unreachable database": (
        ["resume"],
        {"PAYOUT_LEDGER_STORE_URL": f"postgresql://u:{PW}@127.0.0.1:1/db"},
    ),
    "audit: unencoded password": (
        ["audit"],
        {"PAYOUT_LEDGER_STORE_URL": f"postgresql://u:{DB_PASSWORD}@h/db"},
    ),
    "audit: webhook secrets not JSON": (
        ["audit"],
        {"PAYOUT_LEDGER_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET},
    ),
    "audit: cipher key not base64": (
        ["audit"],
        {"PAYOUT_LEDGER_CIPHER_KEY": f"!{CIPHER_KEY}!"},
    ),
    "audit: wrong cipher key": (
        ["audit"],
        {"PAYOUT_LEDGER_CIPHER_KEY": base64.b64encode(b"k" * 32).decode()},
    ),
    "resume: publishable key": (
        ["resume"],
        {"PAYOUT_LEDGER_STRIPE_API_KEY": "pk_" + STRIPE_KEY[3:]},
    ),
    "resume: key where a number goes": (
        ["resume"],
        {"PAYOUT_LEDGER_STRIPE_TIMEOUT": STRIPE_KEY},
    ),
    "--store-url with a password": (
        ["audit", "--store-url", f"postgresql://u:{PW}@127.0.0.1:1/db"],
        {},
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_the_command_line_never_shows_a_secret(world: World, case: str, tmp_path: Path) -> None:
    args, overrides = CLI_CASES[case]
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(app, args, env=_cli_env(world, **overrides))
    if case.endswith("(working)"):
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
    texts = [result.output]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        texts += exception_texts(result.exception)
    for text in texts:
        assert leaked(text) == [], f"{case}: {text}"


def test_the_number_of_combinations_checked() -> None:
    """Each surface is checked against each of the five secrets."""
    surfaces = len(ERRORS) + len(SURFACES) + len(CLI_CASES) + 3  # logs, PG rows, SQLite file
    assert len(SECRETS) * surfaces == 5 * surfaces >= 5 * 60
