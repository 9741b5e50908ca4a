"""Tamper evidence: every stored event names the digest of the event before it.

Every aggregate the ledger stores derives from
[`ChainedAggregate`][payout_ledger.chain.ChainedAggregate]. Its events carry a
``previous_hash``: the [`event_digest`][payout_ledger.chain.event_digest] of the
aggregate's previous event, or [`GENESIS`][payout_ledger.chain.GENESIS] (64
zeros) for the first. The link is injected centrally, in ``trigger_event`` and
``_create``, so command methods do not mention it and ``apply`` methods stay
pure assignments.

An event's digest is the SHA-256 of canonical JSON (sorted keys, no spaces,
UTF-8) of its topic, originator id, version, class version and fields
(timestamp and ``previous_hash`` included) **as stored**: an event that was
upcast on the way in keeps the fields it was stored with (see
[`keeps_stored_form`][payout_ledger.chain.keeps_stored_form]), so a future
upcaster cannot make yesterday's chain look broken.

A per-aggregate chain cannot notice that the newest events were removed, or
that the newest event was edited. [`LedgerSeal`][payout_ledger.chain.LedgerSeal]
closes that gap: each seal records the highest notification id, the number of
events and a rolling digest over every event in notification order, and is
itself chained to the previous seal. See ``docs/audit.md`` for the threat model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Self, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate, CanInitAggregate, CanMutateAggregate
from eventsourcing.utils import get_topic

__all__ = [
    "GENESIS",
    "LEDGER_SEAL_ID",
    "STORED_FORM",
    "ChainedAggregate",
    "LedgerSeal",
    "canonical_json",
    "create_or_continue",
    "event_digest",
    "keeps_stored_form",
    "roll",
]

GENESIS = "0" * 64
"""The ``previous_hash`` of an aggregate's first event, and the empty log's rolling digest."""

STORED_FORM = "_stored_form"
"""Key under which an upcast event keeps ``(stored class version, stored fields)``."""

LEDGER_SEAL_ID = UUID("5ea15ea1-0c1d-4b6e-9a2f-000000005ea1")
"""The id of the ledger's one seal aggregate; fixed forever."""

_NOT_FIELDS = frozenset({"originator_id", "originator_version", STORED_FORM})
_UPCASTER_NAME = re.compile(r"^upcast_v(\d+)_v(\d+)$")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def canonical_json(value: object) -> bytes:
    """Canonical JSON: sorted keys, no insignificant space, UTF-8.

    Datetimes are ISO 8601 (as the event store writes them), UUIDs and
    Decimals strings, enums their values, tuples arrays.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    ).encode("utf-8")


def _digest(
    topic: str,
    originator_id: object,
    originator_version: int,
    class_version: int,
    fields: Mapping[str, Any],
) -> str:
    envelope = {
        "topic": topic,
        "originator_id": str(originator_id),
        "originator_version": originator_version,
        "class_version": class_version,
        "fields": {k: v for k, v in fields.items() if k not in _NOT_FIELDS},
    }
    return hashlib.sha256(canonical_json(envelope)).hexdigest()


def event_digest(event: object) -> str:
    """The SHA-256 (hex) that the aggregate's next event records as ``previous_hash``.

    Covers the topic, originator id, version, class version and every field as
    the event was stored (an upcast event's original fields, see
    [`keeps_stored_form`][payout_ledger.chain.keeps_stored_form]).
    """
    state = vars(event)
    stored = state.get(STORED_FORM)
    if stored is not None:
        class_version, fields = stored
    else:
        class_version, fields = getattr(type(event), "class_version", 1), state
    return _digest(
        get_topic(type(event)),
        state["originator_id"],
        state["originator_version"],
        class_version,
        fields,
    )


def roll(rolling: str, notification_id: int, digest: str) -> str:
    """The rolling log digest after one more event: sha256(previous || id || digest)."""
    return hashlib.sha256(
        bytes.fromhex(rolling)
        + notification_id.to_bytes(8, "big", signed=True)
        + bytes.fromhex(digest)
    ).hexdigest()


_F = TypeVar("_F", bound=Callable[[dict[str, Any]], None])


def keeps_stored_form(upcaster: _F) -> _F:
    """Decorate an ``upcast_vN_vM`` function so the event remembers how it was stored.

    The first upcaster to run copies the stored fields (and the stored class
    version ``N``) under [`STORED_FORM`][payout_ledger.chain.STORED_FORM]; the
    digest is computed over that copy. Chained event classes refuse upcasters
    without this decorator.
    """
    match = _UPCASTER_NAME.match(upcaster.__name__)
    if match is None:
        raise TypeError(f"an upcaster is named upcast_vN_vM, not {upcaster.__name__}")
    stored_version = int(match.group(1))

    @functools.wraps(upcaster)
    def upcast(state: dict[str, Any]) -> None:
        if STORED_FORM not in state:
            state[STORED_FORM] = (stored_version, dict(state))
        upcaster(state)

    upcast.keeps_stored_form = True  # type: ignore[attr-defined]
    return upcast  # type: ignore[return-value]


class ChainedAggregate(Aggregate):
    """An aggregate whose events are chained by hash; the ledger's aggregates derive from it.

    ``previous_hash`` is ``None`` only on events stored before chaining existed
    (a legacy prefix); [`verify`][payout_ledger.audit.verify.verify_ledger]
    counts those and relies on seals for them.
    """

    class Event(Aggregate.Event):
        previous_hash: str | None = field(default=None, kw_only=True)
        """The digest of the aggregate's previous event; GENESIS for the first; None if legacy."""

        def __init_subclass__(cls) -> None:
            super().__init_subclass__()
            for name in vars(cls):
                upcaster = getattr(cls, name)
                if _UPCASTER_NAME.match(name) and not getattr(upcaster, "keeps_stored_form", False):
                    raise TypeError(f"{cls.__qualname__}.{name} needs @keeps_stored_form")

        def mutate(self, aggregate: Any) -> Any:
            mutated = super().mutate(aggregate)
            _record_head(mutated, self)
            return mutated

    class Created(Event, Aggregate.Created):
        pass

    @property
    def chain_head(self) -> str:
        """The digest of this aggregate's newest event: the next event's ``previous_hash``."""
        last = self.__dict__.get("_chain_last")
        return GENESIS if last is None else event_digest(last)

    def trigger_event(
        self,
        event_class: type[CanMutateAggregate[UUID]],
        **kwargs: Any,
    ) -> None:
        kwargs["previous_hash"] = self.chain_head
        super().trigger_event(event_class, **kwargs)

    @classmethod
    def _create(
        cls,
        event_class: type[CanInitAggregate[UUID]],
        *,
        id: UUID | None = None,  # eventsourcing's parameter name
        **kwargs: Any,
    ) -> Self:
        kwargs["previous_hash"] = GENESIS
        return super()._create(event_class, id=id, **kwargs)


def _record_head(aggregate: Any, event: ChainedAggregate.Event) -> None:
    # Keep the event, not its digest: replays stay cheap, the digest is computed
    # only when the next event is triggered.
    aggregate._chain_last = event


def create_or_continue(event: ChainedAggregate.Event, aggregate: Any) -> Any:
    """``mutate`` of a "created" event that may also continue an existing aggregate.

    ``PayoutStarted`` creates a payout on the first attempt and starts later
    attempts on it; ``Sealed`` creates the seal chain and extends it.
    """
    if aggregate is None:
        mutated = CanInitAggregate.mutate(event, aggregate)  # type: ignore[arg-type]
    else:
        mutated = CanMutateAggregate.mutate(event, aggregate)
    _record_head(mutated, event)
    return mutated


class LedgerSeal(ChainedAggregate):
    """The chain of seals over the whole log (one aggregate, id ``LEDGER_SEAL_ID``)."""

    TOPIC = "payout_ledger:LedgerSeal"

    class Event(ChainedAggregate.Event):
        TOPIC = "payout_ledger:LedgerSeal.Event"

    class Sealed(Event, ChainedAggregate.Created):
        """The log up to ``through_notification_id`` had ``event_count`` events and ``log_digest``.

        It creates the seal aggregate the first time and extends it afterwards.
        """

        TOPIC = "payout_ledger:Sealed"
        through_notification_id: int
        event_count: int
        log_digest: str

        def mutate(self, aggregate: Any) -> Any:
            return create_or_continue(self, aggregate)

        def apply(self, aggregate: LedgerSeal) -> None:
            aggregate.through_notification_id = self.through_notification_id
            aggregate.event_count = self.event_count
            aggregate.log_digest = self.log_digest

    def __init__(self) -> None:
        self.through_notification_id: int
        self.event_count: int
        self.log_digest: str

    @staticmethod
    def create_id() -> UUID:
        return LEDGER_SEAL_ID

    @classmethod
    def first(cls, *, through_notification_id: int, event_count: int, log_digest: str) -> Self:
        """The first seal."""
        return cls._create(
            cls.Sealed,
            through_notification_id=through_notification_id,
            event_count=event_count,
            log_digest=log_digest,
        )

    def extend(self, *, through_notification_id: int, event_count: int, log_digest: str) -> None:
        """A further seal, chained to the previous one."""
        self.trigger_event(
            self.Sealed,
            originator_topic=get_topic(type(self)),
            through_notification_id=through_notification_id,
            event_count=event_count,
            log_digest=log_digest,
        )
