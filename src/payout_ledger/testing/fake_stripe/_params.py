"""Validation of decoded request parameters, with Stripe's error shapes.

Every function here only reads; each raises `ParamError` (a 400 that
the idempotency layer does not save) when a parameter is missing or invalid.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

from ._errors import ParamError
from ._forms import FormValue, Params

__all__ = [
    "check_known",
    "created_filter",
    "currency_param",
    "int_param",
    "metadata_param",
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


def str_param(params: Params, name: str) -> str | None:
    """Return an optional string parameter, ``None`` if absent."""
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParamError(f"Invalid string: {name} must be a string", param=name)
    return value


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
        param = f"metadata[{key}]"
        if not isinstance(value, str):
            raise ParamError("Metadata values must be strings, not hashes or arrays", param=param)
        if len(key) > MAX_METADATA_KEY_LENGTH:
            raise ParamError(
                f"Metadata keys can be at most {MAX_METADATA_KEY_LENGTH} characters",
                param=param,
            )
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            raise ParamError(
                f"Metadata values can be at most {MAX_METADATA_VALUE_LENGTH} characters",
                param=param,
            )
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > MAX_METADATA_KEYS:
        raise ParamError(f"Metadata can have at most {MAX_METADATA_KEYS} keys", param="metadata")
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


def _missing(name: str) -> ParamError:
    return ParamError(f"Missing required param: {name}.", param=name, code="parameter_missing")
