"""The auditor's fast path over stored bytes: digests, and a strict test of what is ordinary.

Verify and the audit read millions of events. Building an event object for
each (a ``Notification``, a UUID, the JSON object hook, datetimes, the event)
costs several times what reading and hashing its bytes does. Here:

* [`StoredDigest`][payout_ledger.audit.stored.StoredDigest] computes
  [`state_digest`][payout_ledger.domain.chain.state_digest] of a stored event
  from its columns, without parsing the originator id;
* [`OrdinaryEvents`][payout_ledger.audit.stored.OrdinaryEvents] decides whether a
  stored state is *ordinary*: a JSON object, as the ledger writes it, of the
  current class version, whose fields have their declared types, that the
  mapper would decode into exactly the dict it returns. For such an event the
  auditors use the dict as is; anything else (an upcast, an escape, a typed
  value the test does not know, a damaged event) goes through the mapper, event
  by event, exactly as before. The test is strict on purpose: being ordinary
  only ever saves time, it never decides a finding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

from eventsourcing.utils import get_topic

from payout_ledger.audit.checkpoint import CheckpointRefusedError
from payout_ledger.domain.account import ConnectedAccount
from payout_ledger.domain.chain import _DIGEST_FRAME
from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.domain.store_mode import StoreModeRecord
from payout_ledger.domain.stripe_events import CapturedPayment, StripeEventRecord

LEDGER_EVENT_CLASSES: list[type] = [
    PayoutAggregate.PayoutStarted,
    PayoutAggregate.TransferFailed,
    PayoutAggregate.TransferSucceeded,
    PayoutAggregate.Released,
    PayoutAggregate.TransferReversed,
    PayoutAggregate.ReversalStarted,
    PayoutAggregate.ReversalSucceeded,
    PayoutAggregate.ReversalFailed,
    StripeEventRecord.StripeEventReceived,
    CapturedPayment.PaymentCaptured,
    ConnectedAccount.PayabilityReported,
    LedgerSeal.Sealed,
    StoreModeRecord.ModeDeclared,
]
"""Every event class the ledger writes."""

__all__ = [
    "LEDGER_EVENT_CLASSES",
    "OrdinaryEvents",
    "SeenFilter",
    "StoredDigest",
    "filter_bits",
    "restored_filter",
    "saved_filter",
]

_sha256 = hashlib.sha256
_scan_once: Callable[[str, int], tuple[Any, int]] = cast(Any, json.JSONDecoder()).scan_once


class StoredDigest:
    """``state_digest`` of a stored event, as bytes, from 32 lower-case hex digits of its id."""

    def __init__(self) -> None:
        self._topics: dict[str, bytes] = {}
        self._versions = [
            len(str(v)).to_bytes(8, "big") + str(v).encode("ascii") for v in range(256)
        ]

    def __call__(self, topic: str, oid: str, version: int, state: bytes) -> bytes:
        prefix = self._topics.get(topic)
        if prefix is None:
            encoded = topic.encode("utf-8", "surrogatepass")
            prefix = self._topics[topic] = (
                len(_DIGEST_FRAME).to_bytes(8, "big")
                + _DIGEST_FRAME
                + len(encoded).to_bytes(8, "big")
                + encoded
                + (36).to_bytes(8, "big")
            )
        if 0 <= version < 256:
            v = self._versions[version]
        else:
            text = str(version).encode("ascii")
            v = len(text).to_bytes(8, "big") + text
        return _sha256(
            b"".join(
                (
                    prefix,
                    f"{oid[:8]}-{oid[8:12]}-{oid[12:16]}-{oid[16:20]}-{oid[20:]}".encode("ascii"),
                    v,
                    len(state).to_bytes(8, "big"),
                    state,
                )
            )
        ).digest()


_Check = Callable[[Any], bool]
"""A test of one raw JSON value whose type alone does not decide (a typed object, a dict)."""

_FieldTest = tuple[frozenset[type], dict[type, _Check]]
"""The types a field's raw value may have as is, and the types whose value needs a check."""

_ESCAPE = b"\\u"
_TYPED = b'"_type_"'
_NOT_CHECKED = frozenset({"originator_id", "originator_version"})
"""Fields the mapper sets from the row's columns, whatever the stored state says."""


def _typed(name: str, parse: Callable[[Any], object]) -> _Check:
    def test(v: Any) -> bool:
        if len(v) != 2 or v.get("_type_") != name:
            return False
        data = v.get("_data_")
        if type(data) is not str:
            return False
        try:
            parse(data)
        except ValueError:
            return False
        return True

    return test


def _str_dict(v: Any) -> bool:
    return all(type(k) is str and type(x) is str for k, x in v.items()) and not (
        len(v) == 2 and "_type_" in v and "_data_" in v
    )


def _decimal(data: str) -> Decimal:
    try:
        return Decimal(data)
    except ArithmeticError:
        raise ValueError(data) from None


_TYPED_OBJECTS: dict[Any, _Check] = {
    datetime: _typed("datetime_iso", datetime.fromisoformat),
    UUID: _typed("uuid_hex", UUID),
    Decimal: _typed("decimal_str", _decimal),
}
"""The values the ledger's transcoder writes as ``{"_type_": ..., "_data_": ...}``."""


def _field_test(hint: Any) -> _FieldTest | None:
    """How a declared type is tested on its raw JSON value, or None if this path does not know."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        static: set[type] = set()
        dynamic: dict[type, _Check] = {}
        for alternative in args:
            test = _field_test(alternative)
            if test is None or set(test[1]) & set(dynamic):
                return None
            static |= test[0]
            dynamic.update(test[1])
        return frozenset(static), dynamic
    if hint is type(None) or hint is None:
        return frozenset({type(None)}), {}
    if hint in (int, str, bool, float):
        return frozenset({hint}), {}
    if hint in _TYPED_OBJECTS:
        return frozenset(), {dict: _TYPED_OBJECTS[hint]}
    if origin is dict and args == (str, str):
        return frozenset(), {dict: _str_dict}
    return None


_Shape = tuple[tuple[str, ...], tuple[type, ...]]
"""A decoded state's keys and the types of its values, in order."""


class _Ordinary:
    """One event class: its version, its fields' tests, and the verdict on each shape seen."""

    __slots__ = ("class_version", "fields", "hints", "shapes", "templates", "tests", "wanted")

    def __init__(
        self,
        class_version: int,
        tests: tuple[tuple[str, _FieldTest, bool], ...],
        hints: dict[str, Any],
    ) -> None:
        self.class_version = class_version
        self.tests = tests
        self.hints = hints
        self.shapes: dict[_Shape, _Verdict | None] = {}
        self.templates: list[_Template] = []
        self.fields: list[_Fields] = []
        self.wanted: frozenset[str] = frozenset()

    def learn(self, shape: _Shape) -> _Verdict | None:
        """The value checks a state of this shape needs and how many typed objects it holds,
        or None if its types are not ordinary."""
        found = dict(zip(*shape, strict=True))
        checks: list[tuple[str, _Check]] = []
        verdict: _Verdict | None = None
        for name, (static, dynamic), required in self.tests:
            kind = found.get(name, _ABSENT)
            if kind is _ABSENT:
                if required:
                    break
            elif kind in dynamic:
                checks.append((name, dynamic[kind]))
            elif kind not in static:
                break
        else:
            verdict = tuple(checks), sum(check is not _str_dict for _, check in checks)
        if len(self.shapes) < _SHAPES:
            self.shapes[shape] = verdict
        return verdict


_Verdict = tuple[tuple[tuple[str, _Check], ...], int]
"""A shape's value checks, and how many of them are typed objects."""

_ABSENT: Any = object()
_TEMPLATES = 8
"""Templates learnt per class at most."""
_fromisoformat = datetime.fromisoformat
_SHAPES = 4096
"""Shapes remembered per class (a log written by the ledger has a handful)."""


_STR = rb'"[^"\\\x00-\x1f]*"'
_INT = rb"-?(?:0|[1-9][0-9]{0,17})"
_VALUES: dict[type, bytes] = {
    str: _STR,
    int: _INT,
    bool: rb"(?:true|false)",
    type(None): rb"null",
}
_HEX64 = rb'"([0-9a-f]{64})"'
_TYPED_PATTERNS: dict[Any, bytes] = {
    datetime: rb'\{"_type_":"datetime_iso","_data_":"([0-9T:.+\-]{1,64})"\}',
    UUID: rb'\{"_type_":"uuid_hex","_data_":"[0-9a-f]{32}"\}',
}
_STR_DICT = rb"\{(?:%s:%s(?:,%s:%s)*)?\}" % (_STR, _STR, _STR, _STR)


def _value_pattern(hint: Any, datetimes: bool = True) -> tuple[bytes, int] | None:
    """A pattern for a declared type's raw value, and how many datetime groups it captures
    (none if not ``datetimes``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_value_pattern(a, datetimes) for a in args]
        if any(p is None for p in parts):
            return None
        known = cast(list[tuple[bytes, int]], parts)
        return b"(?:" + b"|".join(p for p, _ in known) + b")", sum(g for _, g in known)
    if hint is None:
        hint = type(None)
    if hint in _VALUES:
        return _VALUES[hint], 0
    if hint in _TYPED_PATTERNS:
        if hint is datetime and not datetimes:
            return _TYPED_PATTERNS[hint].replace(b'"([', b'"(?:['), 0
        return _TYPED_PATTERNS[hint], 1 if hint is datetime else 0
    if origin is dict and args == (str, str):
        return _STR_DICT, 0
    return None


class _Template:
    """The bytes of one ordinary shape, as a pattern: matching it proves the state ordinary.

    Keys are literal and in order, each value matches its declared type (strings
    without escapes or control characters, ints of at most 18 digits), the
    previous hash is captured and every datetime is captured to be parsed.
    """

    __slots__ = ("datetimes", "match", "previous")

    def __init__(
        self, match: Callable[[bytes], Any], datetimes: tuple[int, ...], previous: int
    ) -> None:
        self.match = match
        self.datetimes = datetimes
        """The indexes of the groups that capture a datetime's text (None if it is null)."""
        self.previous = previous
        """The index of the group that captures the previous hash."""


def _template(
    keys: tuple[str, ...], state: dict[str, Any], hints: dict[str, Any], class_version: int
) -> _Template | None:
    parts: list[bytes] = []
    datetimes: list[int] = []
    previous = -1
    groups = typed = 0
    for key in keys:
        if not key.isidentifier() or not key.isascii():
            return None
        if key == "previous_hash":
            pattern: tuple[bytes, int] | None = (_HEX64, 0)
        elif key in hints and key not in _NOT_CHECKED:
            pattern = _value_pattern(hints[key])
        else:
            pattern = (_VALUES[str], 0) if type(state[key]) is str else None
        if pattern is None:
            return None
        if key == "previous_hash":
            previous = groups
        datetimes.extend(range(groups, groups + pattern[1]))
        groups += pattern[1] + (key == "previous_hash")
        typed += pattern[0].count(b'"_type_"')
        parts.append(b'"' + key.encode("ascii") + b'":' + pattern[0])
    if class_version > 1:
        parts.append(b'"class_version":' + str(class_version).encode("ascii"))
    if previous < 0 or len(datetimes) != typed:  # a typed value that is not a datetime
        return None
    compiled = re.compile(b"\\{" + b",".join(parts) + b"\\}")
    return _Template(compiled.fullmatch, tuple(datetimes), previous)


def _capture(hint: Any, name: str) -> tuple[str, str] | None:
    """A pattern capturing a folded field's raw value in one group named ``name``, and
    its kind.

    Kinds: ``str`` (the group is the value), ``int``, ``bool``; ``?`` before a
    kind when the value may be null (the group is then None).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None
        hint = rest[0]
    if hint is str:
        pattern, kind = rf'"(?P<{name}>[^"\\\x00-\x1f]*)"', "str"
    elif hint is int:
        pattern, kind = rf"(?P<{name}>-?(?:0|[1-9][0-9]{{0,17}}))", "int"
    elif hint is bool:
        pattern, kind = rf"(?P<{name}>true|false)", "bool"
    else:
        return None
    if optional:
        return "(?:" + pattern + "|null)", "?" + kind
    return pattern, kind


class _Fields:
    """A template (over the state as text) capturing the fields a reader folds."""

    __slots__ = ("bools", "ints", "match", "optional_ints")

    def __init__(self, match: Callable[[str], Any], kinds: list[tuple[str, str]]) -> None:
        self.match = match
        self.ints = tuple(name for name, kind in kinds if kind == "int")
        self.optional_ints = tuple(name for name, kind in kinds if kind == "?int")
        self.bools = tuple(name for name, kind in kinds if kind.endswith("bool"))


def _fields_template(
    keys: tuple[str, ...],
    hints: dict[str, Any],
    class_version: int,
    wanted: frozenset[str],
) -> _Fields | None:
    parts: list[str] = []
    kinds: list[tuple[str, str]] = []
    for key in keys:
        if not key.isidentifier() or not key.isascii():
            return None
        if key in wanted:
            captured = _capture(hints[key], key)
            if captured is None:
                return None
            kinds.append((key, captured[1]))
            pattern = captured[0]
        elif key == "previous_hash":
            pattern = '"[0-9a-f]{64}"'
        elif key in hints and key not in _NOT_CHECKED:
            found = _value_pattern(hints[key], datetimes=False)
            if found is None:
                return None
            pattern = found[0].decode("ascii")
        else:  # a key the class does not declare: a reader may look for it, decode it all
            return None
        parts.append('"' + key + '":' + pattern)
    if class_version > 1:
        parts.append(f'"class_version":{class_version}')
    compiled = re.compile("\\{" + ",".join(parts) + "\\}")
    if compiled.groups != len(kinds):
        return None
    return _Fields(compiled.fullmatch, kinds)


class OrdinaryEvents:
    """Decodes a stored state if it is ordinary (see the module docs), else answers None.

    ``classes`` are the event classes whose own topic may be ordinary; the
    state must be plain JSON (no cipher or compressor: the caller decrypts).
    """

    def __init__(
        self, classes: list[type], wanted: dict[type, tuple[str, ...]] | None = None
    ) -> None:
        self._known: dict[str, _Ordinary] = {}
        for cls in classes:
            hints = typing.get_type_hints(cls)
            tests: list[tuple[str, _FieldTest, bool]] = []
            for f in dataclasses.fields(cls):
                if f.name in _NOT_CHECKED:
                    continue
                test = _field_test(hints[f.name])
                if test is None:
                    break
                required = (
                    f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                )
                tests.append((f.name, test, required))
            else:
                known = self._known[get_topic(cls)] = _Ordinary(
                    getattr(cls, "class_version", 1), tuple(tests), hints
                )
                known.wanted = frozenset((wanted or {}).get(cls, ()))

    def previous_hash(self, topic: str, plaintext: bytes) -> str | None:
        """The previous hash of an ordinary stored state that has one, else None.

        Matches the state's bytes against the templates learnt from the ordinary
        states decoded so far (a few per class), without decoding the JSON; a
        state no template matches is decoded (and its shape, if ordinary, learnt).
        """
        known = self._known.get(topic)
        if known is None:
            return None
        if plaintext.isascii():
            for template in known.templates:
                found = template.match(plaintext)
                if found is not None:
                    groups = found.groups()
                    typed = 0
                    for i in template.datetimes:
                        text = groups[i]
                        if text is not None:
                            typed += 1
                            try:
                                _fromisoformat(text.decode("ascii"))
                            except ValueError:
                                return None
                    if plaintext.count(_TYPED) != typed:
                        return None
                    return cast(bytes, groups[template.previous]).decode("ascii")
        state = self.decode(topic, plaintext)
        if state is None:
            return None
        previous = state.get("previous_hash")
        if len(known.templates) < _TEMPLATES:
            learnt = _template(tuple(state), state, known.hints, known.class_version)
            if learnt is not None:
                known.templates.append(learnt)
        return previous if type(previous) is str else None

    def fields(self, topic: str, plaintext: bytes) -> dict[str, Any] | None:
        """The folded fields (``wanted``) of an ordinary stored state, else None.

        Like ``previous_hash``: matched against templates learnt from the
        ordinary states decoded so far; a state no template matches is decoded
        in full (and returned whole, if ordinary).
        """
        known = self._known.get(topic)
        if known is None:
            return None
        if plaintext.isascii():
            text = plaintext.decode("ascii")
            for template in known.fields:
                found = template.match(text)
                if found is not None:
                    state: dict[str, Any] = found.groupdict()
                    for name in template.ints:
                        state[name] = int(state[name])
                    for name in template.optional_ints:
                        if state[name] is not None:
                            state[name] = int(state[name])
                    for name in template.bools:
                        if state[name] is not None:
                            state[name] = state[name] == "true"
                    return state
        decoded = self.decode(topic, plaintext)
        if decoded is not None and len(known.fields) < _TEMPLATES:
            learnt = _fields_template(
                tuple(decoded), known.hints, known.class_version, known.wanted
            )
            if learnt is not None:
                known.fields.append(learnt)
        return decoded

    def decode(self, topic: str, plaintext: bytes) -> dict[str, Any] | None:
        """The state as the mapper would decode it (``class_version`` removed), or None."""
        known = self._known.get(topic)
        if known is None or _ESCAPE in plaintext:
            return None
        try:
            text = plaintext.decode("utf-8")
            state, end = _scan_once(text, 0)
        except (UnicodeDecodeError, StopIteration, ValueError, RecursionError):
            return None
        if end != len(text) or type(state) is not dict:
            return None
        version = state.pop("class_version", 1)
        if type(version) is not int or version != known.class_version:
            return None
        shape = (tuple(state), tuple(map(type, state.values())))
        verdict = known.shapes.get(shape, _ABSENT)
        if verdict is _ABSENT:
            verdict = known.learn(shape)
        if verdict is None:
            return None
        checks, typed = verdict
        for name, check in checks:
            if not check(state[name]):
                return None
        # Every object the transcoder would turn into a value is one checked above.
        if plaintext.count(_TYPED) != typed:
            return None
        return state


def filter_bits(events: int) -> int:
    """The size of a [`SeenFilter`][payout_ledger.audit.stored.SeenFilter] for a log of ``events``.

    About 16 bits per event, a power of two from 2**16 to 2**28 (32 MB): at 10
    million events, about 3 million aggregates, 1 in 2,000 first events is a
    "maybe" that costs a query.
    """
    bits = 1 << 16
    while bits < events * 16 and bits < 1 << 28:
        bits <<= 1
    return bits


_FILTER_FORM = 2
"""The form of a [`SeenFilter`][payout_ledger.audit.stored.SeenFilter]'s bits, as a
checkpoint records it: two bits per aggregate."""


def saved_filter(seen: SeenFilter | None) -> dict[str, int]:
    """What a checkpoint's body records of ``seen`` (None: the run kept none): its
    size and its form."""
    return {"filter_bits": 0 if seen is None else seen.mask + 1, "filter_form": _FILTER_FORM}


def restored_filter(body: dict[str, Any], data: Any) -> SeenFilter:
    """The filter a checkpoint's body recorded (``saved_filter``), with its bits.

    A filter of another form (the previous release marked one bit per aggregate)
    would answer "never seen" for aggregates it saw: the checkpoint is refused.
    """
    if body.get("filter_form") != _FILTER_FORM:
        raise CheckpointRefusedError("its filter of seen aggregates is of another release's form")
    return SeenFilter(body["filter_bits"], data)


class SeenFilter:
    """Which aggregates may have been seen: a bitmap, two bits per aggregate.

    A bounded reader keeps state for recent aggregates only. When an event's
    aggregate is not among them, the filter tells "certainly never seen" (its
    first event: nothing to rebuild) from "maybe seen" (rebuild it from the
    log, which is exact; a false "maybe" costs one query). An aggregate's two
    bits are taken from its id's low bits and from its bits 96 and up (ids are
    UUIDs, random there); with one bit per aggregate a false "maybe" was about
    20 times as frequent.
    """

    def __init__(self, bits: int = 1 << 28, data: Any = None) -> None:
        self.mask = bits - 1
        if data is None:
            data = bytearray(bits >> 3)
        elif not isinstance(data, bytearray):
            data = bytearray(data)
        if len(data) != bits >> 3:
            raise ValueError(f"a filter of {bits} bits holds {len(data)} bytes")
        self.bits = data

    def add(self, key: int) -> bool:
        """Mark ``key``; whether it was (maybe) marked before."""
        mask = self.mask
        i, j = key & mask, (key >> 96) & mask
        low, high = 1 << (i & 7), 1 << (j & 7)
        i >>= 3
        j >>= 3
        bits = self.bits
        if bits[i] & low and bits[j] & high:
            return True
        bits[i] |= low
        bits[j] |= high
        return False
