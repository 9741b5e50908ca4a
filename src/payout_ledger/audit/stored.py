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
  auditors use the dict as is; anything else (an upcast, a ``\\u`` escape, a
  typed value the test does not know, a damaged event) goes through the mapper,
  event by event, exactly as before. The test is strict on purpose: being
  ordinary only ever saves time, it never decides a finding.

Most states are exactly as their class declares (every key declared, each value
of its type, the class's own version): those are read in one typed pass
(``payout_ledger.adapters.typed_state``), at a fraction of the cost of decoding
the JSON and testing its shape, which every other state goes through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import msgspec
from eventsourcing.utils import get_topic

from payout_ledger.adapters.typed_state import TypedState, revived_by_the_transcoder, typed_state
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
        revived_by_the_transcoder(v)
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

    __slots__ = ("class_version", "shapes", "tests", "typed", "typed_fields")

    def __init__(
        self,
        class_version: int,
        tests: tuple[tuple[str, _FieldTest, bool], ...],
        typed: TypedState | None,
        typed_fields: bool,
    ) -> None:
        self.class_version = class_version
        self.tests = tests
        self.shapes: dict[_Shape, _Verdict | None] = {}
        self.typed = typed
        """The class's typed reading (None: it has none)."""
        self.typed_fields = typed_fields
        """Whether ``typed`` serves ``fields``: every wanted field is one without a default."""

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
_SHAPES = 4096
"""Shapes remembered per class (a log written by the ledger has a handful)."""


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
                folded = (wanted or {}).get(cls, ())
                typed = typed_state(cls)
                self._known[get_topic(cls)] = _Ordinary(
                    getattr(cls, "class_version", 1),
                    tuple(tests),
                    typed,
                    typed is not None
                    and all(required for name, _, required in tests if name in folded),
                )

    def previous_hash(self, topic: str, plaintext: bytes) -> str | None:
        """The previous hash of an ordinary stored state that has one, else None.

        A state exactly as its class declares is read in one typed pass
        (``payout_ledger.adapters.typed_state``); any other is decoded as JSON
        (see ``decode``).
        """
        known = self._known.get(topic)
        if known is None:
            return None
        previous: Any
        read = known.typed.checked(plaintext) if known.typed is not None else None
        if read is not None:
            previous = read.previous_hash
        else:
            state = self.decode(topic, plaintext)
            if state is None:
                return None
            previous = state.get("previous_hash")
        return previous if type(previous) is str else None

    def fields(self, topic: str, plaintext: bytes) -> dict[str, Any] | None:
        """An ordinary stored state as a dict holding at least its folded fields (``wanted``,
        each of its declared type), else None.

        Read as ``previous_hash`` reads it: in one typed pass if the state is exactly
        as its class declares and every wanted field is one without a default (its
        dict then holds every field, a datetime as a ``StoredTime``), else decoded
        as JSON.
        """
        known = self._known.get(topic)
        if known is None:
            return None
        if known.typed_fields and known.typed is not None:
            read = known.typed.checked(plaintext)
            if read is not None:
                return msgspec.structs.asdict(read)
        return self.decode(topic, plaintext)

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

    def may_have(self, key: int) -> bool:
        """Whether ``key`` may have been marked (False: certainly not)."""
        mask = self.mask
        i, j = key & mask, (key >> 96) & mask
        bits = self.bits
        return bool(bits[i >> 3] & (1 << (i & 7)) and bits[j >> 3] & (1 << (j & 7)))

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
