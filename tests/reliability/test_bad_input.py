"""Bad input at every public door, fuzzed: clear typed errors, nothing recorded, no secret.

The doors: a release request (``release_payment`` and its async twin), the
queries (``resume``, ``get_payout``, ``history``), a Stripe event recorded
directly or through the webhook endpoint, the operator's CLI arguments and
environment (with a Stripe key, webhook secrets and a database password in it:
none may show, and a command that cannot run says why in one line with a
documented exit code), ``LedgerSettings`` with ``PayoutLedger``'s construction
(store URLs carrying a password, which no error may quote), and the stored
events the read model is built from (any change to a stored payout event leaves
the payouts table usable).

Release requests are judged by an oracle written from the documented contract
(``Identifier``, ``Money``), independent of the library's own validation: an
input it calls invalid must raise ``InvalidRequestError`` (``InvalidMoneyError``
when only the money is wrong) with nothing stored and no Stripe call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from payout_ledger import (
    ConfigurationError,
    InvalidMoneyError,
    InvalidRequestError,
    LedgerSettings,
    Money,
    PayoutLedger,
    PayoutLedgerError,
    PayoutNotFoundError,
    ProviderNotFoundError,
    ReleaseConflictError,
    ReleaseResult,
    StoreError,
)
from payout_ledger.cli import app
from payout_ledger.domain.money import STRIPE_CURRENCIES, max_amount
from payout_ledger.domain.stripe_events import StripeEventReceipt
from payout_ledger.settings import STRIPE_API_VERSION
from payout_ledger.stripe.webhooks import WebhookHandler
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe, sign_payload
from tests.reliability.config import SIZES
from tests.reliability.figures import FIGURES
from tests.reliability.system import PROVIDER_ID, provider, release_request

SECTION = "bad_input"
SECRET = "whsec_reliability_fuzz_0123456789abcdef"
FUZZ = settings(
    max_examples=SIZES.fuzz_examples,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


def count(name: str, n: int = 1) -> None:
    FIGURES.add(SECTION, name, n)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
odd_values = st.one_of(
    json_values,
    st.binary(max_size=8),
    st.uuids(),
    st.just(object()),
    st.sampled_from(["", " ", "es 1", "x" * 201, "x" * 200, "é", "es_1\n", "\x00", "usd", " USD "]),
)


@pytest.fixture
def ledger() -> Iterator[tuple[PayoutLedger, InMemoryTransferGateway]]:
    gateway = InMemoryTransferGateway()
    with PayoutLedger(
        settings=LedgerSettings(store_url="memory://"),
        providers=InMemoryProviderDirectory([provider("acct_fuzz")]),
        gateway=gateway,
    ) as made:
        yield made, gateway


def stored(ledger: PayoutLedger) -> int:
    return ledger.recorder.max_notification_id() or 0


# -- release requests --------------------------------------------------------------------


def _identifier_ok(value: object) -> tuple[bool, str | None]:
    """The documented ``Identifier``: 1-200 printable ASCII without spaces (ints, UUIDs too)."""
    if isinstance(value, bool):
        return False, None
    if isinstance(value, int | uuid.UUID):
        value = str(value)
    elif isinstance(value, bytes | bytearray):  # pydantic's lax str accepts UTF-8 bytes
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return False, None
    if not isinstance(value, str):
        return False, None
    ok = 1 <= len(value) <= 200 and all(0x21 <= ord(c) <= 0x7E for c in value)
    return ok, value if ok else None


def _money_ok(value: object) -> bool:
    """The documented ``Money``: an int > 0 of minor units, at most Stripe's maximum,
    and a currency Stripe supports."""
    if isinstance(value, Money):
        return True
    if not isinstance(value, Mapping):
        return False
    amount, currency = value.get("amount"), value.get("currency")
    return (
        isinstance(amount, int)
        and not isinstance(amount, bool)
        and isinstance(currency, str)
        and currency.strip().lower() in STRIPE_CURRENCIES
        and 0 < amount <= max_amount(currency.strip().lower())
    )


def judge(request: object, ledger: PayoutLedger) -> str:
    """``valid``, ``conflict``, ``unknown_provider``, ``bad_money`` or ``bad_request``.

    ``conflict``: valid, but the service was recorded (by an earlier example)
    with another amount or currency: ``ReleaseConflictError`` is the answer.
    """
    if isinstance(request, Mapping):
        keys_ok = set(request) == {"event_service_id", "provider_id", "amount"} and all(
            isinstance(k, str) for k in request
        )
        if keys_ok:
            service_ok, service = _identifier_ok(request["event_service_id"])
            provider_ok, provider_id = _identifier_ok(request["provider_id"])
            if service_ok and provider_ok:
                money = request["amount"]
                if not _money_ok(money):
                    return "bad_money"
                if provider_id != PROVIDER_ID:
                    return "unknown_provider"
                if isinstance(money, Mapping):
                    money = Money(money["amount"], money["currency"])
                recorded = ledger.find_payout(str(service))
                if recorded is not None and (recorded.amount, recorded.currency) != (
                    money.amount,
                    money.currency,
                ):
                    return "conflict"
                return "valid"
    return "bad_request"


@st.composite
def release_requests(draw: st.DrawFn) -> object:
    """Near-valid requests with one part broken, or anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(odd_values)
    request: dict[Any, Any] = release_request(f"es_{draw(st.integers(0, 10**6))}")
    request["amount"] = dict(request["amount"])
    part = draw(
        st.sampled_from(
            [
                "event_service_id",
                "provider_id",
                "amount",
                "amount.amount",
                "amount.currency",
                "extra",
                "missing",
                "none",
            ]
        )
    )
    if part in ("event_service_id", "provider_id", "amount"):
        request[part] = draw(odd_values)
    elif part.startswith("amount."):
        request["amount"][part.split(".")[1]] = draw(odd_values)
    elif part == "extra":
        request[draw(st.text(max_size=8) | st.integers())] = draw(json_values)
    elif part == "missing":
        del request[draw(st.sampled_from(sorted(request)))]
    return request


def check_release_door(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, request: object, call: Any
) -> None:
    verdict = judge(request, ledger)
    before, calls = stored(ledger), gateway.calls
    refused: PayoutLedgerError | None = None
    try:
        result = call(request)
    except (InvalidRequestError, ProviderNotFoundError, ReleaseConflictError) as exc:
        refused = exc
    if refused is None:
        assert verdict == "valid", (verdict, request, result)
        assert isinstance(result, ReleaseResult)
        count("release accepted (valid input)")
        return
    expected = {
        "bad_money": InvalidMoneyError,
        "bad_request": InvalidRequestError,
        "unknown_provider": ProviderNotFoundError,
        "conflict": ReleaseConflictError,
    }.get(verdict)
    assert expected is not None and isinstance(refused, expected), (verdict, request, refused)
    assert str(refused)
    assert stored(ledger) == before and gateway.calls == calls
    count(f"release refused: {type(refused).__name__}")
    count("bad inputs refused with nothing recorded")


@FUZZ
@given(request=release_requests())
def test_a_bad_release_request_is_refused_with_a_typed_error_and_nothing_recorded(
    ledger: tuple[PayoutLedger, InMemoryTransferGateway], request: object
) -> None:
    """Whatever a host passes to release_payment, the oracle's verdict holds, nothing leaks."""
    count("examples: release_payment")
    check_release_door(*ledger, request, ledger[0].release_payment)


@FUZZ
@given(request=release_requests())
def test_a_bad_async_release_request_is_refused_the_same_way(
    ledger: tuple[PayoutLedger, InMemoryTransferGateway], request: object
) -> None:
    """release_payment_async judges input exactly as release_payment does."""
    count("examples: release_payment_async")
    led = ledger[0]
    check_release_door(*ledger, request, lambda r: asyncio.run(led.release_payment_async(r)))


@FUZZ
@given(service=odd_values)
def test_queries_with_any_service_id_answer_or_raise_payout_not_found(
    ledger: tuple[PayoutLedger, InMemoryTransferGateway], service: Any
) -> None:
    """resume, get_payout and history never fail with anything but the library's errors:
    PayoutNotFoundError, or InvalidRequestError for an id no release request could have."""
    count("examples: queries")
    led, _ = ledger
    before = stored(led)
    valid, _ = _identifier_ok(service)
    for query in (led.resume, led.get_payout, led.find_payout, led.history):
        try:
            query(service)
        except PayoutNotFoundError:
            pass
        except InvalidRequestError:
            assert not valid, service
    assert stored(led) == before


# -- Stripe events ---------------------------------------------------------------------

TRANSFER_TYPES = ["transfer.created", "transfer.updated", "transfer.reversed"]
EVENT_TYPES = [*TRANSFER_TYPES, "payment_intent.succeeded", "account.updated", "charge.refunded"]


@st.composite
def stripe_events(draw: st.DrawFn) -> dict[str, Any]:
    """Stripe-shaped events with any value in the fields the ledger reads."""
    obj: dict[str, Any] = {
        "id": f"tr_{draw(st.integers(0, 99))}",
        "object": "transfer",
        "amount": 5000,
        "currency": "usd",
        "destination": "acct_fuzz",
        "metadata": {"event_service_id": "es_fuzz", "attempt": "1"},
        "amount_reversed": 0,
        "created": 1,
    }
    for key in draw(st.sets(st.sampled_from(sorted(obj)), max_size=3)):
        if draw(st.booleans()):
            obj.pop(key)
        else:
            obj[key] = draw(json_values)
    event: dict[str, Any] = {
        "id": draw(st.sampled_from(["evt_1", "evt_2"]) | st.text(min_size=1, max_size=20)),
        "object": "event",
        "type": draw(st.sampled_from(EVENT_TYPES) | st.text(max_size=20)),
        "data": {"object": obj},
        "created": int(time.time()),
        "api_version": STRIPE_API_VERSION,
    }
    for key in draw(st.sets(st.sampled_from(["id", "type", "data", "account", "created"]))):
        if draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = draw(json_values)
    return event


@FUZZ
@given(event=stripe_events())
def test_a_malformed_stripe_event_is_refused_with_invalid_request_and_nothing_recorded(
    ledger: tuple[PayoutLedger, InMemoryTransferGateway], event: dict[str, Any]
) -> None:
    """record_stripe_event: a receipt, or InvalidRequestError with nothing stored."""
    count("examples: record_stripe_event")
    led, _ = ledger
    before = stored(led)
    receipt: StripeEventReceipt | None = None
    with contextlib.suppress(InvalidRequestError):
        receipt = led.record_stripe_event(
            event=event, raw_body=json.dumps(event, default=str).encode(), headers={}
        )
    if receipt is None:
        assert stored(led) == before
        count("stripe events refused: InvalidRequestError")
    else:
        assert isinstance(receipt, StripeEventReceipt)
        count("stripe events recorded")


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        ("transfer.created", "amount", float("inf")),
        ("transfer.reversed", "amount_reversed", float("inf")),
        ("transfer.updated", "created", float("-inf")),
        ("payment_intent.succeeded", "amount", float("inf")),
    ],
)
def test_a_stripe_object_with_an_infinite_number_is_an_invalid_request(
    ledger: tuple[PayoutLedger, InMemoryTransferGateway], event_type: str, field: str, value: Any
) -> None:
    """An infinite number in a Stripe object is InvalidRequestError, like any bad number."""
    led, _ = ledger
    obj = {"id": "tr_1", "object": "transfer", "amount": 5000, "currency": "usd", field: value}
    event = {"id": "evt_bad", "type": event_type, "data": {"object": obj}}
    event["api_version"] = STRIPE_API_VERSION
    with pytest.raises(InvalidRequestError):
        led.record_stripe_event(event=event, raw_body=b"{}", headers={})


def test_a_signed_event_with_an_overflowing_amount_is_answered_400_not_500(
    ledger: tuple[PayoutLedger, InMemoryTransferGateway],
) -> None:
    """The endpoint answers 400 to an event it can never record, so Stripe stops retrying."""
    handler = WebhookHandler(ledger[0], secrets=[SECRET], environment="production")
    body = (
        b'{"id": "evt_big", "type": "transfer.created", "data": {"object": '
        b'{"id": "tr_1", "amount": 1e400, "currency": "usd"}}, '
        b'"api_version": "' + STRIPE_API_VERSION.encode() + b'"}'
    )
    response = handler.handle(
        body, {"Stripe-Signature": sign_payload(body, SECRET, int(time.time()))}
    )
    assert response.status == 400, response


bodies = st.one_of(
    st.binary(max_size=200),
    stripe_events().map(lambda e: json.dumps(e, default=str).encode()),
)
header_values = st.text(max_size=60) | st.sampled_from(["", "t=1,v1=00", "v1=abc", "t=x"])


@FUZZ
@given(
    body=bodies,
    signature=st.none() | header_values,
    extra=st.dictionaries(
        st.sampled_from(["content-type", "x-forwarded-for", "STRIPE-SIGNATURE"]),
        header_values,
        max_size=2,
    ),
)
def test_an_unsigned_or_forged_webhook_is_refused_and_changes_nothing(
    ledger: tuple[PayoutLedger, InMemoryTransferGateway],
    body: bytes,
    signature: str | None,
    extra: dict[str, str],
) -> None:
    """Without Stripe's signature nothing is parsed or stored: 403 (413 if oversized)."""
    count("examples: webhook (unsigned or forged)")
    led, _ = ledger
    handler = WebhookHandler(led, secrets=[SECRET], environment="production")
    headers = dict(extra)
    if signature is not None:
        headers["Stripe-Signature"] = signature
    before = stored(led)
    response = handler.handle(body, headers)
    assert response.status in (403, 413), response
    assert stored(led) == before
    count(f"webhooks refused: {response.status}")


@FUZZ
@given(event=stripe_events())
def test_a_signed_webhook_is_recorded_or_refused_with_400_never_500(
    ledger: tuple[PayoutLedger, InMemoryTransferGateway], event: dict[str, Any]
) -> None:
    """A correctly signed body is 200 (recorded once) or 400 (nothing stored), never 500."""
    count("examples: webhook (signed)")
    led, _ = ledger
    handler = WebhookHandler(led, secrets=[SECRET], environment="production")
    body = json.dumps(event, default=str).encode()
    before = stored(led)
    response = handler.handle(
        body, {"Stripe-Signature": sign_payload(body, SECRET, int(time.time()))}
    )
    assert response.status in (200, 400), response
    if response.status == 400:
        assert stored(led) == before
    count(f"signed webhooks answered: {response.status}")


# -- settings and construction ---------------------------------------------------------

SETTING_VALUES = st.one_of(json_values, st.sampled_from(["1", "true", "0", "-1", "1e9", "sk_x"]))


DB_PASSWORD = "Pw-fuzz-5b9f3c1e8a"
"""A database password in some fuzzed URLs: no error message may show it."""


def store_urls(folder: Path) -> st.SearchStrategy[Any]:
    """Store URLs that never reach a network host: memory, SQLite under ``folder``, junk."""
    return st.one_of(
        st.sampled_from(
            [
                f"postgresql://user:{DB_PASSWORD}@/nodb?schema=x",
                f"postgresql://user:{DB_PASSWORD}@?host=/nonexistent",
                f"mysql://user:{DB_PASSWORD}@h/d",
                f"sqlite:///{folder}/ok.db?password={DB_PASSWORD}",
                "memory://",
                f"sqlite:///{folder}/ok.db",
                f"sqlite:///{folder}/missing/dir.db",
                "sqlite://",
                "sqlite:///",
                "sqlite:///:memory:",
                "postgresql://",
                "postgresql:///nodb?schema=x",
                "postgresql://?host=/nonexistent",
                "mysql://x/y",
                "",
            ]
        ),
        st.text(max_size=20).filter(lambda s: "://" not in s or s.startswith("memory")),
    )


@st.composite
def settings_kwargs(draw: st.DrawFn, folder: Path) -> dict[str, Any]:
    names = [*sorted(LedgerSettings.model_fields), "unknown_setting"]
    kwargs = {
        name: draw(SETTING_VALUES) for name in draw(st.sets(st.sampled_from(names), max_size=4))
    }
    kwargs["store_url"] = draw(store_urls(folder))
    return kwargs


@pytest.fixture(scope="module")
def settings_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("settings-fuzz")


@FUZZ
@given(data=st.data())
def test_bad_settings_are_refused_by_validation_or_configuration_errors(
    settings_folder: Path, data: st.DataObject
) -> None:
    """LedgerSettings and PayoutLedger(...) raise ConfigurationError only."""
    count("examples: settings")
    kwargs = data.draw(settings_kwargs(settings_folder))
    try:
        built = LedgerSettings(**kwargs)
    except ConfigurationError as exc:
        message = f"{exc} {exc.args!r}"
        count("settings refused: ConfigurationError")
        assert DB_PASSWORD not in message
        return
    assert DB_PASSWORD not in repr(built) and DB_PASSWORD not in built.model_dump_json()
    try:
        ledger = PayoutLedger(
            settings=built,
            providers=InMemoryProviderDirectory([]),
            gateway=InMemoryTransferGateway(),
        )
    except (ConfigurationError, StoreError) as exc:
        message = str(exc)
        count(f"settings refused: {type(exc).__name__}")
        assert DB_PASSWORD not in message
        return
    ledger.close()
    count("settings accepted")


# -- the operator's CLI ------------------------------------------------------------------


@pytest.fixture
def cli_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dict[str, str], PayoutLedger]]:
    """A working CLI environment: an SQLite store with one payout, the fake Stripe."""
    monkeypatch.chdir(tmp_path)
    with FakeStripe(api_key=CLI_API_KEY) as fake:
        account = str(fake.client().v1.accounts.create({"type": "express"}).id)
        url = f"sqlite:///{tmp_path / 'cli.db'}"
        env = {
            "PAYOUT_LEDGER_STORE_URL": url,
            "PAYOUT_LEDGER_STRIPE_API_KEY": fake.api_key,
            "PAYOUT_LEDGER_STRIPE_API_BASE": fake.url,
            "PAYOUT_LEDGER_STRIPE_MAX_NETWORK_RETRIES": "0",
            "PAYOUT_LEDGER_STRIPE_TIMEOUT": "5",
            "PAYOUT_LEDGER_STRIPE_WEBHOOK_SECRETS": json.dumps([CLI_WEBHOOK_SECRET]),
        }
        from tests.reliability.system import build_ledger, stripe_gateway

        with build_ledger(url, account, stripe_gateway(fake)) as ledger:
            assert ledger.release_payment(release_request("es_cli")).success
            yield env, ledger


CLI_API_KEY = "sk_test_fuzzKey7d4c2a91e6b3f05d"
CLI_WEBHOOK_SECRET = "whsec_fuzzSecret8e1f7a2c9d4b6035"
CLI_SECRETS = (
    CLI_API_KEY,
    CLI_API_KEY[8:],
    CLI_WEBHOOK_SECRET,
    CLI_WEBHOOK_SECRET[6:],
    DB_PASSWORD,
)
"""What no CLI output may show (the whole secrets, and their random parts)."""


def check_cli_answer(result: Any, context: object) -> None:
    """A documented exit code; no traceback, no secret; one ``error:`` line when it cannot run."""
    assert result.exit_code in (0, 1, 2, 3), (context, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        context,
        repr(result.exception),
    )
    assert "Traceback" not in result.output
    for secret in CLI_SECRETS:
        assert secret not in result.output, (context, result.output)
    if result.exit_code in (2, 3):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith("error:")]
        if result.exit_code == 2 and not errors and "Usage:" in result.output:
            count("cli exit 2: no command, the usage shown")
            return
        # One error line: ours ("error: ...", alone), or the command line's own usage
        # error ("Error: ...", after its usage line).
        assert len(errors) == 1, (context, result.stderr)
        assert lines == errors or all(
            line in errors or line.startswith(("Usage:", "Try ")) for line in lines
        ), (context, result.stderr)


# What an environment or a command line can hold: no NUL, no lone surrogate except
# those that stand for undecodable bytes (surrogateescape, e.g. "\udcff").
ENV_CHARACTERS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")

CLI_TOKENS = st.sampled_from(
    [
        "resume",
        "reconcile",
        "nonsense",
        "--service",
        "--since",
        "--until",
        "--json",
        "--store-url",
        "--help",
        "--",
        "-x",
        "es_cli",
        "2030-01-01",
        "2030-13-45",
        "yesterday",
        "memory://",
        "sqlite://",
        "sqlite:////nonexistent/dir/x.db",
        "postgresql://",
        "mysql://h/d",
        "\udcff",
        "",
    ]
)


@FUZZ
@given(argv=st.lists(CLI_TOKENS | st.text(alphabet=ENV_CHARACTERS, max_size=10), max_size=6))
def test_bad_cli_arguments_exit_with_a_usage_or_configuration_error_and_record_nothing(
    cli_env: tuple[dict[str, str], PayoutLedger], argv: list[str]
) -> None:
    """Any arguments: a documented exit code (0, 1, 2 or 3) with a message, never a
    traceback; the store is unchanged."""
    count("examples: cli arguments")
    env, ledger = cli_env
    before = stored(ledger)
    result = CliRunner().invoke(app, argv, env=env)
    if "--help" not in argv:  # --help prints usage, on stdout: checked without the one-line rule
        check_cli_answer(result, argv)
    assert "Traceback" not in result.output
    assert stored(ledger) == before
    count(f"cli exit {result.exit_code}")


ENV_SETTINGS = [
    "PAYOUT_LEDGER_STORE_URL",
    "PAYOUT_LEDGER_ENVIRONMENT",
    "PAYOUT_LEDGER_STRIPE_ENABLED",
    "PAYOUT_LEDGER_STRIPE_API_KEY",
    "PAYOUT_LEDGER_STRIPE_TIMEOUT",
    "PAYOUT_LEDGER_STRIPE_MAX_NETWORK_RETRIES",
    "PAYOUT_LEDGER_STRIPE_IDEMPOTENCY_WINDOW",
    "PAYOUT_LEDGER_SQLITE_LOCK_TIMEOUT",
    "PAYOUT_LEDGER_CLAIM_ATTEMPTS",
]


@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(ENV_SETTINGS),
        st.text(alphabet=ENV_CHARACTERS, max_size=12)
        | st.sampled_from(
            [
                "0",
                "-1",
                "abc",
                "production",
                "false",
                "sk_test_x",
                "memory://",
                "\udcff",
                f"postgresql://user:{DB_PASSWORD}@127.0.0.1:1/x",
                f"postgresql://user:{DB_PASSWORD}@/x?host=/nonexistent",
                f"{CLI_API_KEY}!",
            ]
        ),
        max_size=3,
    ),
    command=st.sampled_from([["resume"], ["reconcile", "--service", "es_cli"]]),
)
def test_bad_environment_settings_exit_with_a_configuration_error_and_record_nothing(
    cli_env: tuple[dict[str, str], PayoutLedger], overrides: dict[str, str], command: list[str]
) -> None:
    """PAYOUT_LEDGER_* variables with any text: a one-line error (exit 2) or a normal run."""
    count("examples: cli environment")
    env, ledger = cli_env
    before = stored(ledger)
    result = CliRunner().invoke(app, command, env={**env, **overrides})
    # The documented codes: 0 ok, 1 findings, 2 configuration, 3 store or Stripe unreachable.
    check_cli_answer(result, overrides)
    assert stored(ledger) == before
    count(f"cli exit {result.exit_code}")


def test_a_malformed_list_setting_in_the_environment_is_a_configuration_error(
    cli_env: tuple[dict[str, str], PayoutLedger],
) -> None:
    """A list-valued variable that is not JSON: exit 2 and a one-line configuration error."""
    env, _ = cli_env
    result = CliRunner().invoke(
        app, ["resume"], env={**env, "PAYOUT_LEDGER_STRIPE_WEBHOOK_SECRETS": "whsec_x"}
    )
    assert result.exit_code == 2 and "configuration" in result.output, (
        result.exit_code,
        repr(result.exception),
    )


# -- the stored events the read model is built from -----------------------------------

STORED_VALUES = st.one_of(
    json_values,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from(["", "\u0000", "es_\u00e9", 2**63, -(2**63) - 1, 1e308, True, None]),
)


@pytest.fixture(scope="module")
def projected_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An SQLite file with a paid, a failed and an in-flight payout, kept as a template."""
    from tests.reliability.system import build_ledger

    folder = tmp_path_factory.mktemp("read-model-fuzz")
    url = f"sqlite:///{folder / 'template.db'}"
    gateway = InMemoryTransferGateway()
    with build_ledger(url, "acct_fuzz", gateway) as ledger:
        assert ledger.release_payment(release_request("es_paid")).success
        gateway.decline_next()
        ledger.release_payment(release_request("es_failed"))
        from payout_ledger import TransferOutcomeUnknown

        gateway.fail_next(TransferOutcomeUnknown("timeout"))
        ledger.release_payment(release_request("es_in_flight"))
    return str(folder / "template.db")


@FUZZ
@given(data=st.data())
def test_any_stored_payout_event_leaves_the_read_model_usable(
    projected_store: str, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """A field of a stored payout event set to anything: ``project`` never fails, the event
    is either projected or counted as skipped, and the other payouts' rows are there."""
    import shutil
    import sqlite3

    from payout_ledger.adapters.projection import open_payouts_view, run_projection
    from tests.reliability.system import build_ledger

    count("examples: stored events for the read model")
    path = tmp_path_factory.mktemp("rm") / "payouts.db"
    shutil.copy(projected_store, path)
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT rowid, state FROM stored_events WHERE topic LIKE 'payout_ledger:%' "
            "AND topic NOT LIKE '%StoreMode%'"
        ).fetchall()
        rowid, state = data.draw(st.sampled_from(rows), label="row")
        decoded = json.loads(state)
        key = data.draw(st.sampled_from(sorted(decoded)), label="field")
        decoded[key] = data.draw(STORED_VALUES, label="value")
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?",
            (json.dumps(decoded).encode(), rowid),
        )
    with build_ledger(f"sqlite:///{path}", "acct_fuzz", InMemoryTransferGateway()) as ledger:
        view = open_payouts_view(ledger)
        run = run_projection(ledger, view=view)
        rebuilt = run_projection(ledger, view=view, rebuild=True)
        services = {row.event_service_id for row in view.rows()}
    assert run.skipped == rebuilt.skipped
    assert len(services) >= 2, services  # one event spoils at most its own payout's row
    count(f"read model: {'skipped' if run.skipped else 'projected'}")
