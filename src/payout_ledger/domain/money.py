"""Money: an integer amount in minor units plus a currency Stripe supports.

Amounts are never floats: ``Money(amount=1050, currency="eur")`` is 10.50 EUR.
Currencies are written in lower case, as Stripe writes them.

Money is refused when Stripe would refuse its transfer, before anything is
recorded: a currency outside [`STRIPE_CURRENCIES`][payout_ledger.domain.money.STRIPE_CURRENCIES],
or an amount above [`max_amount`][payout_ledger.domain.money.max_amount] (eight digits,
99,999,999 minor units, for most currencies). Every amount accepted therefore
fits a PostgreSQL ``bigint`` and an SQLite ``INTEGER``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from payout_ledger.errors import InvalidMoneyError, InvalidRequestError

__all__ = [
    "ISO_4217_CURRENCIES",
    "STRIPE_CURRENCIES",
    "STRIPE_MAX_AMOUNT",
    "Money",
    "max_amount",
]

# Active ISO 4217 alphabetic codes (2024 list, funds and precious metals excluded).
ISO_4217_CURRENCIES: frozenset[str] = frozenset(
    """
        aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn
        bhd bif bmd bnd bob brl bsd btn bwp byn bzd cad cdf chf
        clp cny cop crc cup cve czk djf dkk dop dzd egp ern etb
        eur fjd fkp gbp gel ghs gip gmd gnf gtq gyd hkd hnl htg
        huf idr ils inr iqd irr isk jmd jod jpy kes kgs khr kmf
        kpw krw kwd kyd kzt lak lbp lkr lrd lsl lyd mad mdl mga
        mkd mmk mnt mop mru mur mvr mwk mxn myr mzn nad ngn nio
        nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd
        rub rwf sar sbd scr sdg sek sgd shp sle sll sos srd ssp
        stn svc syp szl thb tjs tmt tnd top try ttd twd tzs uah
        ugx usd uyu uzs ves vnd vuv wst xaf xcd xcg xof xpf yer
        zar zmw zwg zwl
    """.split()  # noqa: SIM905 - a table reads better than a list
)


# The currencies Stripe supports, lower case. Source: the "Currency is the list of
# supported currencies" enumeration of Stripe's official Go SDK (stripe/stripe-go,
# currency.go, which points to support.stripe.com/questions/which-currencies-does-
# stripe-support), with "byn" and "mmk" as the async-stripe SDK's copy of that list
# adds them; codes no longer in ISO 4217 (eek, hrk, ltl, lvl, mro, std, vef) left
# out. docs.stripe.com/currencies ("Supported presentment currencies") draws its
# list per account country; a currency Stripe added after these lists (e.g. sle,
# xcg, or the three-decimal bhd, jod, kwd, omr, tnd) is refused until added here.
STRIPE_CURRENCIES: frozenset[str] = frozenset(
    """
        aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn
        bif bmd bnd bob brl bsd bwp byn bzd cad cdf chf clp cny
        cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp
        gel gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr isk
        jmd jpy kes kgs khr kmf krw kyd kzt lak lbp lkr lrd lsl
        mad mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad
        ngn nio nok npr nzd pab pen pgk php pkr pln pyg qar ron
        rsd rub rwf sar sbd scr sek sgd shp sll sos srd svc szl
        thb tjs top try ttd twd tzs uah ugx usd uyu uzs vnd vuv
        wst xaf xcd xof xpf yer zar zmw
    """.split()  # noqa: SIM905
)
"""The currencies a payout may be made in (a subset of ``ISO_4217_CURRENCIES``)."""

STRIPE_MAX_AMOUNT = 99_999_999
"""The largest amount, in minor units, Stripe takes in most currencies.

Stripe's docs ("Supported currencies", "Minimum and maximum charge amounts"):
"The ``amount`` value supports up to [...] 8 digits for all other currencies,
for a maximum charge of 999,999.99 (99999999)". The fake Stripe server
(``payout_ledger.testing.fake_stripe``) refuses above the same limit."""

_WIDER_MAXIMUMS: dict[str, int] = {
    "idr": 999_999_999_999,  # "12 digits for IDR"
    "inr": 999_999_999,  # "9 digits for INR"
}


def max_amount(currency: str) -> int:
    """The largest amount of ``currency`` (lower case) Stripe takes, in minor units."""
    return _WIDER_MAXIMUMS.get(currency, STRIPE_MAX_AMOUNT)


def _minor_units(value: Any) -> int:
    # bool is an int subclass, a float is a rounding accident waiting to happen and
    # a string hides a unit mistake ("10.50"): only a real int is an amount.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"amount must be an int number of minor units, not {type(value).__name__}")
    if value <= 0:
        raise ValueError("amount must be greater than zero")
    return value


def _currency(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("currency must be an ISO 4217 code such as 'usd'")
    code = value.strip().lower()
    if code not in ISO_4217_CURRENCIES:
        raise ValueError(f"unknown ISO 4217 currency {value[:16]!r}")
    if code not in STRIPE_CURRENCIES:
        raise ValueError(f"Stripe does not support the currency {code!r}")
    return code


class Money(BaseModel):
    """A positive amount of one currency, in its minor units (cents for usd).

    Raises [`InvalidMoneyError`][payout_ledger.InvalidMoneyError] for a float,
    bool or string amount, zero or less, more than Stripe takes
    ([`max_amount`][payout_ledger.domain.money.max_amount]), or a currency Stripe does
    not support ([`STRIPE_CURRENCIES`][payout_ledger.domain.money.STRIPE_CURRENCIES]).
    """

    model_config = ConfigDict(frozen=True, strict=False)

    amount: Annotated[int, BeforeValidator(_minor_units)]
    """Minor units, greater than zero."""
    currency: Annotated[str, BeforeValidator(_currency)]
    """Lower-case ISO 4217 code of a currency Stripe supports."""

    @model_validator(mode="after")
    def _within_stripes_maximum(self) -> Money:
        limit = max_amount(self.currency)
        if self.amount > limit:
            raise ValueError(
                f"amount must be at most {limit} minor units of {self.currency} (Stripe's maximum)"
            )
        return self

    def __init__(self, amount: Any = None, currency: Any = None, /, **data: Any) -> None:
        if amount is not None:
            data.setdefault("amount", amount)
        if currency is not None:
            data.setdefault("currency", currency)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidMoneyError(_first_error(exc)) from None

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


def _library_error(
    exc: ValidationError, error_class: type[InvalidRequestError], prefix: str = ""
) -> InvalidRequestError:
    """The library's error for pydantic's ``exc``: one of ours raised during validation
    (a nested model's own ``__init__``) as it is, under its location; otherwise
    ``error_class`` with the first error's location and message."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, InvalidRequestError):
        error_class, message = type(inner), str(inner)
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
    if where and not message.startswith(f"{where}:"):
        message = f"{where}: {message}"
    return error_class(f"{prefix}{message}")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
