"""Validation of decoded request parameters, with Stripe's error shapes.

Every function here only reads; each raises `ParamError` (a 400 that
the idempotency layer does not save) when a parameter is missing or invalid.

Stripe's documented limits enforced here:

* amounts: at most eight digits, 99999999 in the currency's smallest unit
  (Stripe docs, "Supported currencies", section "Minimum and maximum charge
  amounts", and the API reference of a PaymentIntent's or Charge's
  ``amount``: "The amount value supports up to eight digits (e.g., a value of
  99999999 for a USD charge of $999,999.99)").  Stripe states the limit for
  charges; the fake applies it to every ``amount`` it takes (transfers and
  reversals), refused with the documented error code ``amount_too_large``.
* metadata (Stripe docs, "Metadata"): at most 50 key-value pairs, keys of at
  most 40 characters without square brackets, values of at most 500
  characters.  The messages follow the ones Stripe's API returns
  ("Invalid key: ... must be a string under 40 characters", "Invalid val: ...
  must be a string under 500 characters", "Metadata can have up to 50 keys,
  but you've set 51.").
* ``description``: at most 5000 characters (``maxLength`` of the transfer and
  reversal ``description`` parameters in Stripe's OpenAPI specification).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

from payout_ledger.domain.money import STRIPE_MAX_AMOUNT, max_amount

from ._errors import ParamError
from ._forms import FormValue, Params

__all__ = [
    "amount_param",
    "check_known",
    "created_filter",
    "currency_param",
    "description_param",
    "int_param",
    "metadata_param",
    "optional_amount_param",
    "required_int",
    "required_str",
    "str_param",
]

_CURRENCY = re.compile(r"^[a-z]{3}$")
_INTEGER = re.compile(r"^-?[0-9]+$")
_RANGE_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "gt": lambda created, bound: created > bound,
    "gte": lambda created, bound: created >= bound,
    "lt": lambda created, bound: created < bound,
    "lte": lambda created, bound: created <= bound,
}
MAX_AMOUNT = STRIPE_MAX_AMOUNT
MAX_DESCRIPTION_LENGTH = 5000
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500


def check_known(params: Params, allowed: Collection[str]) -> None:
    """Refuse any top-level parameter outside ``allowed`` (``expand`` is always
    accepted, and ignored)."""
    for name in params:
        if name != "expand" and name not in allowed:
            raise ParamError(
                f"Received unknown parameter: {name} (the fake Stripe server does not model it)",
                param=name,
                code="parameter_unknown",
            )


def str_param(params: Params, name: str, *, max_length: int | None = None) -> str | None:
    """Return an optional string parameter of at most ``max_length`` characters,
    ``None`` if absent."""
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParamError(f"Invalid string: {name} must be a string", param=name)
    if max_length is not None and len(value) > max_length:
        raise ParamError(
            f"Invalid string: {name} must be at most {max_length} characters "
            f"(this one has {len(value)}).",
            param=name,
        )
    return value


def description_param(params: Params) -> str | None:
    """Return the optional ``description``, at most 5000 characters."""
    return str_param(params, "description", max_length=MAX_DESCRIPTION_LENGTH)


def required_str(params: Params, name: str) -> str:
    """Return a required, non-empty string parameter."""
    value = str_param(params, name)
    if value is None:
        raise _missing(name)
    if value == "":
        raise ParamError(
            f"You passed an empty string for '{name}'. We assume empty values "
            f"are an attempt to unset a parameter; however '{name}' cannot be unset.",
            param=name,
            code="parameter_invalid_empty",
        )
    return value


def int_param(
    params: Params, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    """Return an optional integer parameter within ``[minimum, maximum]``."""
    raw = params.get(name)
    if raw is None:
        return None
    return _parse_int(raw, name, minimum=minimum, maximum=maximum)


def required_int(params: Params, name: str, *, minimum: int | None = None) -> int:
    """Return a required integer parameter of at least ``minimum``."""
    value = int_param(params, name, minimum=minimum)
    if value is None:
        raise _missing(name)
    return value


def amount_param(params: Params, currency: str | None = None) -> int:
    """Return the required ``amount``: a positive integer within Stripe's maximum."""
    amount = optional_amount_param(params, currency)
    if amount is None:
        raise _missing("amount")
    return amount


def optional_amount_param(params: Params, currency: str | None = None) -> int | None:
    """Return ``amount`` if given: a positive integer within Stripe's maximum.

    Above it (eight digits, `MAX_AMOUNT`; more for the few currencies Stripe
    allows more of, see ``payout_ledger.domain.money.max_amount``) Stripe answers
    ``amount_too_large``.
    """
    amount = int_param(params, "amount", minimum=1)
    limit = MAX_AMOUNT if currency is None else max_amount(currency)
    if amount is not None and amount > limit:
        raise ParamError(
            f"Amount must be no more than {limit} (in the currency's smallest unit).",
            param="amount",
            code="amount_too_large",
        )
    return amount


def currency_param(params: Params, name: str = "currency") -> str:
    """Return a required ISO currency code, lowercased as Stripe returns it."""
    raw = required_str(params, name)
    currency = raw.lower()
    if not _CURRENCY.match(currency):
        raise ParamError(f"Invalid currency: {raw}", param=name)
    return currency


def metadata_param(params: Params, current: dict[str, str]) -> dict[str, str] | None:
    """Return ``current`` with the request's ``metadata`` changes applied.

    ``None`` if the request has no ``metadata``.  As in Stripe,
    ``metadata[key]=`` removes one key and ``metadata=`` removes them all.
    """
    raw = params.get("metadata")
    if raw is None:
        return None
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise ParamError("Invalid hash: metadata must be a hash", param="metadata")
    merged = dict(current)
    for key, value in raw.items():
        if "[" in key or "]" in key:
            raise ParamError(
                f"Invalid key: {key} must not contain square brackets ('[' or ']')",
                param="metadata",
            )
        if len(key) > MAX_METADATA_KEY_LENGTH:
            # Stripe's wording; a key of exactly 40 characters is accepted.
            raise ParamError(
                f"Invalid key: {key} must be a string under {MAX_METADATA_KEY_LENGTH} characters",
                param="metadata",
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_LENGTH:
            shown = value if isinstance(value, str) else _form_text(value)
            raise ParamError(
                f"Invalid val: {shown} must be a string under "
                f"{MAX_METADATA_VALUE_LENGTH} characters",
                param="metadata",
            )
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > MAX_METADATA_KEYS:
        raise ParamError(
            f"Metadata can have up to {MAX_METADATA_KEYS} keys, but you've set {len(merged)}.",
            param="metadata",
        )
    return merged


def created_filter(params: Params, name: str = "created") -> Callable[[int], bool]:
    """Return a predicate for a ``created`` filter: an exact timestamp or a
    hash of ``gt``/``gte``/``lt``/``lte`` bounds.  Absent: accept everything."""
    raw = params.get(name)
    if raw is None:
        return lambda _created: True
    if isinstance(raw, str):
        exact = _parse_int(raw, name)
        return lambda created: created == exact
    if not isinstance(raw, dict):
        raise ParamError(f"Invalid {name}: expected an integer or a hash", param=name)
    bounds: list[tuple[Callable[[int, int], bool], int]] = []
    for operator, value in raw.items():
        param = f"{name}[{operator}]"
        if operator not in _RANGE_OPERATORS:
            raise ParamError(
                f"Received unknown parameter: {param}",
                param=param,
                code="parameter_unknown",
            )
        bounds.append((_RANGE_OPERATORS[operator], _parse_int(value, param)))
    return lambda created: all(test(created, bound) for test, bound in bounds)


def _parse_int(
    raw: FormValue, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    if not isinstance(raw, str) or not _INTEGER.match(raw):
        raise ParamError(f"Invalid integer: {raw}", param=name, code="parameter_invalid_integer")
    value = int(raw)
    if minimum is not None and value < minimum:
        raise ParamError(f"This value must be greater than or equal to {minimum}.", param=name)
    if maximum is not None and value > maximum:
        raise ParamError(f"This value must be less than or equal to {maximum}.", param=name)
    return value


def _form_text(value: FormValue) -> str:
    """Render a nested form value for an error message."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_form_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_form_text(v) for v in value) + "]"
    return value


def _missing(name: str) -> ParamError:
    return ParamError(f"Missing required param: {name}.", param=name, code="parameter_missing")
