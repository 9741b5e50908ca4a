"""Settings and ledgers for operator commands.

Settings come from ``PAYOUT_LEDGER_*`` variables (``--store-url`` overrides the
store URL); the ledger opens an *existing* store and never creates one.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from payout_ledger.cli.root import EXIT_UNAVAILABLE, EXIT_USAGE, fail, first_line
from payout_ledger.errors import PayoutLedgerError, StoreNotFoundError
from payout_ledger.service.ledger import PayoutLedger
from payout_ledger.service.ports import (
    NoProviders,
    NoTransfers,
    ProviderDirectory,
    TransferGateway,
)
from payout_ledger.settings import LedgerSettings
from payout_ledger.stripe.gateway import StripeTransferGateway

StoreOption = Annotated[
    str | None,
    typer.Option("--store-url", help="Overrides PAYOUT_LEDGER_STORE_URL."),
]


def _settings_problem(exc: Exception, *, store_url_given: bool) -> str:
    """Which settings are wrong and why, without their values (a value may be a secret)."""
    cause = exc if isinstance(exc, ValidationError) else exc.__cause__
    if not isinstance(cause, ValidationError):
        return first_line(exc)
    problems = []
    for error in cause.errors(include_url=False, include_input=False, include_context=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if not field:
            problems.append(message)
            continue
        name = (
            "--store-url"
            if field == "store_url" and store_url_given
            else f"PAYOUT_LEDGER_{field.upper()}"
        )
        problems.append(f"{name}: {message}")
    return "; ".join(problems) or first_line(exc)


def _settings(store_url: str | None) -> LedgerSettings:
    try:
        overrides = {"store_url": store_url} if store_url else {}
        return LedgerSettings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SettingsError, PayoutLedgerError) as exc:
        fail(
            f"configuration: {_settings_problem(exc, store_url_given=bool(store_url))}",
            EXIT_USAGE,
        )


def operator_ledger(
    store_url: str | None,
    *,
    calls_stripe: bool = True,
    providers: ProviderDirectory | None = None,
) -> PayoutLedger:
    """A ledger on the existing store named by PAYOUT_LEDGER_* variables (or --store-url).

    ``calls_stripe=False``: for commands that only read (and seal); its gateway
    refuses every call. ``providers``: for commands that release (none by default).
    """
    settings = _settings(store_url)
    try:
        gateway: TransferGateway | None = None
        if settings.stripe_enabled:
            gateway = (
                StripeTransferGateway.from_settings(settings) if calls_stripe else NoTransfers()
            )
        return PayoutLedger(
            settings=settings,
            providers=providers or NoProviders(),
            gateway=gateway,
            must_exist=True,
        )
    except StoreNotFoundError as exc:
        hint = ""
        if "store_url" not in settings.model_fields_set:
            hint = (
                f" (PAYOUT_LEDGER_STORE_URL is not set: the default {settings.store_url} was used)"
            )
        fail(f"{first_line(exc)}{hint}", EXIT_UNAVAILABLE)


def reading_ledger(store_url: str | None) -> PayoutLedger:
    """A ledger for commands that only read (and seal): it never calls Stripe."""
    return operator_ledger(store_url, calls_stripe=False)
