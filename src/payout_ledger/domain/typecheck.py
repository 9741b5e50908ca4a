"""Whether a decoded event's fields have the types its class declares.

The mapper builds an event from whatever JSON is stored: a string where the
class declares ``amount: int`` is not refused there. Verify, seal, export and
the audit check the fields they rely on with
[`type_check`][payout_ledger.domain.typecheck.type_check], derived once per
event class (and field selection) from its dataclass annotations and cached.

``int`` means an int and not a bool (``True`` is not an attempt number), and a
float is never an int; ``dict[str, str]`` checks every key and value; an
annotation the check does not know (``Any``, a type variable) accepts anything.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["TypeCheck", "type_check"]

TypeCheck = Callable[[Mapping[str, Any]], "str | None"]
"""Given an event's state: what is wrong with its types, or None."""

_Test = Callable[[Any], bool]
_EXACT = (int, str, bool, float)


def type_check(event_class: type, names: tuple[str, ...] | None = None) -> TypeCheck:
    """The type check of ``event_class``'s fields (or only of ``names``), cached.

    A field without a default must be present; one with a default may be
    absent (it was added later, like ``previous_hash``). Keys the class does
    not declare are not checked.
    """
    return _cached(event_class, names)


@functools.cache
def _cached(event_class: type, names: tuple[str, ...] | None) -> TypeCheck:
    hints = typing.get_type_hints(event_class)
    declared = {f.name: f for f in dataclasses.fields(event_class)}
    tests: list[tuple[str, _Test, bool, str]] = []
    for name in names if names is not None else tuple(declared):
        f = declared[name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        hint = hints[name]
        tests.append((name, _test(hint), required, _describe(hint)))

    def check(state: Mapping[str, Any]) -> str | None:
        for name, test, required, expected in tests:
            if name not in state:
                if required:
                    return f"{name} is missing"
                continue
            value = state[name]
            if not test(value):
                return f"{name} is {type(value).__name__}, not {expected}"
        return None

    exact = [(name, hints[name]) for name, *_ in tests if hints[name] in _EXACT]
    if len(exact) < len(tests) or not all(required for _, _, required, _ in tests):
        return check
    pairs = tuple(exact)

    def check_exact(state: Mapping[str, Any]) -> str | None:
        # Required fields of plain types (the audit's hot loop): one type() each.
        for name, kind in pairs:
            if type(state.get(name)) is not kind:
                return check(state)
        return None

    return check_exact


def _test(hint: Any) -> _Test:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if all(a in _EXACT or a is type(None) for a in args):
            kinds = frozenset(args)  # ``str | None`` and the like: one set lookup
            return lambda v: type(v) in kinds
        alternatives = [_test(a) for a in args]
        return lambda v: any(t(v) for t in alternatives)
    if hint is type(None) or hint is None:
        return lambda v: v is None
    if origin is dict:
        key_test, value_test = (_test(a) for a in args) if args else (_any, _any)
        return lambda v: (
            type(v) is dict and all(key_test(k) and value_test(x) for k, x in v.items())
        )
    if origin is list:
        item_test = _test(args[0]) if args else _any
        return lambda v: type(v) is list and all(item_test(x) for x in v)
    if hint in _EXACT:
        return lambda v: type(v) is hint
    if isinstance(hint, type):
        return lambda v: isinstance(v, hint)
    return _any  # Any, a type variable, a construct the check does not know


def _any(value: Any) -> bool:
    return True


def _describe(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")
