"""Money: an integer amount in minor units plus an ISO 4217 currency.

Amounts are never floats: ``Money(amount=1050, currency="eur")`` is 10.50 EUR.
Currencies are written in lower case, as Stripe writes them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from payout_ledger.errors import InvalidMoneyError

__all__ = ["ISO_4217_CURRENCIES", "Money"]

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
        raise ValueError(f"unknown ISO 4217 currency {value!r}")
    return code


class Money(BaseModel):
    """A positive amount of one currency, in its minor units (cents for usd)."""

    model_config = ConfigDict(frozen=True, strict=False)

    amount: Annotated[int, BeforeValidator(_minor_units)]
    """Minor units, greater than zero."""
    currency: Annotated[str, BeforeValidator(_currency)]
    """Lower-case ISO 4217 code."""

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


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
