"""Tamper evidence: every stored event names the digest of the event before it.

Every aggregate the ledger stores derives from
[`ChainedAggregate`][payout_ledger.domain.chain.ChainedAggregate]. Its events carry a
``previous_hash``: the [`event_digest`][payout_ledger.domain.chain.event_digest] of the
aggregate's previous event, or [`GENESIS`][payout_ledger.domain.chain.GENESIS] (64
zeros) for the first. The link is injected centrally, in ``trigger_event`` and
``_create``, so command methods do not mention it and ``apply`` methods stay
pure assignments.

An event's digest covers the event **exactly as stored**: it is the SHA-256 of
its topic, originator id, version and stored state *bytes*, the plaintext the
transcoder wrote (decrypted and decompressed, not yet decoded), see
[`state_digest`][payout_ledger.domain.chain.state_digest]. Nothing in the stored data
can choose what is digested: any change to a stored event, even a re-encoding of
the same JSON, changes its digest. Upcasting happens after the digest is taken,
so an upcaster added later never changes yesterday's digests.

[`ChainedMapper`][payout_ledger.adapters.mapper.ChainedMapper], the ledger's mapper,
attaches each loaded event's digest, computed from the bytes it decoded. An
event created in this process has not been stored yet: its digest is computed
from the bytes the mapper *will* store
([`stored_state`][payout_ledger.domain.chain.stored_state], with the one transcoder
from [`ledger_transcoder`][payout_ledger.domain.chain.ledger_transcoder]), so events
triggered together before one save can be chained.

Stores written by the previous release have links made with the *v1* digest,
[`legacy_digest`][payout_ledger.domain.chain.legacy_digest] (canonical JSON of the
decoded fields). [`verify_ledger`][payout_ledger.audit.verify_ledger] still
accepts those links, counted and only before an aggregate's first v2 link.

A per-aggregate chain cannot notice that the newest events were removed, or
that the newest event was edited. [`LedgerSeal`][payout_ledger.domain.seal.LedgerSeal]
closes that gap: each seal records the highest notification id, the number of
events and a rolling digest over every event in notification order, and is
itself chained to the previous seal. See ``docs/audit.md`` for the threat model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Self
from uuid import UUID

from eventsourcing.domain import Aggregate, CanInitAggregate, CanMutateAggregate
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Transcoder,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic

__all__ = [
    "GENESIS",
    "AsStored",
    "ChainedAggregate",
    "LedgerTranscoder",
    "as_stored",
    "broken_link",
    "canonical_json",
    "create_or_continue",
    "event_digest",
    "ledger_transcoder",
    "legacy_digest",
    "roll",
    "state_digest",
    "stored_state",
]

GENESIS = "0" * 64
"""The ``previous_hash`` of an aggregate's first event, and the empty log's rolling digest."""


_AS_STORED = "_as_stored"
"""Where the mapper attaches [`AsStored`][payout_ledger.domain.chain.AsStored]."""
_NOT_STORED = frozenset({"originator_id", "originator_version", _AS_STORED})
_DIGEST_FRAME = b"payout-ledger event digest v2"


class LedgerTranscoder(JSONTranscoder):
    """JSON with UUIDs, decimals and datetimes, and an error that says why a state is not JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.register(UUIDAsHex())
        self.register(DecimalAsStr())
        self.register(DatetimeAsISO())

    def decode(self, data: bytes) -> Any:
        try:
            return super().decode(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(
                "a stored event is not JSON: the store is encrypted (set cipher_key) "
                "or the event is damaged"
            ) from None


_TRANSCODER = LedgerTranscoder()


def ledger_transcoder() -> LedgerTranscoder:
    """The transcoder of every ledger and of
    [`stored_state`][payout_ledger.domain.chain.stored_state].

    A single (stateless, thread-safe) instance, so the bytes an aggregate
    predicts for its fresh events and the bytes the mapper stores cannot differ.
    """
    return _TRANSCODER


def stored_state(event: object) -> bytes:
    """The plaintext state bytes the ledger's mapper stores for ``event``.

    As eventsourcing's mapper encodes it: every attribute but the originator id
    and version, then ``class_version`` when above 1.
    """
    state = {k: v for k, v in vars(event).items() if k not in _NOT_STORED}
    class_version = getattr(type(event), "class_version", 1)
    if class_version > 1:
        state["class_version"] = class_version
    return _TRANSCODER.encode(state)


def state_digest(topic: str, originator_id: object, originator_version: int, state: bytes) -> str:
    """Digest v2 of a stored event: SHA-256 (hex) over its columns and plaintext state bytes.

    Each part is prefixed with its length (8 bytes, big-endian): a fixed label,
    the topic (UTF-8), the originator id as canonical UUID text, the version
    in decimal, and the state bytes.
    """
    oid = originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))
    digest = hashlib.sha256()
    for part in (
        _DIGEST_FRAME,
        topic.encode("utf-8", "surrogatepass"),
        str(oid).encode("ascii"),
        str(originator_version).encode("ascii"),
        state,
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class AsStored:
    """How a loaded event was stored (attached by the mapper when it loads the event)."""

    digest: str
    """[`state_digest`][payout_ledger.domain.chain.state_digest] of the stored event."""
    class_version: int
    """The class version it was stored with (before upcasting)."""
    plaintext: bytes
    """The stored state bytes, decrypted and decompressed."""


def as_stored(event: object) -> AsStored | None:
    """How ``event`` was stored, or None for an event created in this process."""
    found = vars(event).get(_AS_STORED)
    return found if isinstance(found, AsStored) else None


def event_digest(event: object) -> str:
    """The digest of ``event`` as stored: the next event's ``previous_hash``.

    The digest the mapper attached when it loaded the event, or, for an event
    created in this process, the digest of the bytes the mapper will store.
    """
    stored = as_stored(event)
    if stored is not None:
        return stored.digest
    state = vars(event)
    return state_digest(
        get_topic(type(event)),
        state["originator_id"],
        state["originator_version"],
        stored_state(event),
    )


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


def legacy_digest(
    topic: str, originator_id: object, originator_version: int, state: Mapping[str, Any]
) -> str:
    """Digest v1, the previous release's, from an event's stored state as decoded (not upcast).

    ``sha256(canonical_json({topic, originator_id, originator_version,
    class_version, fields}))`` where ``class_version`` is the stored one (1 if
    absent) and ``fields`` every other stored key. Only verify uses it, for
    links and seals written by the previous release.
    """
    fields = dict(state)
    class_version = fields.pop("class_version", 1)
    envelope = {
        "topic": topic,
        "originator_id": str(originator_id),
        "originator_version": originator_version,
        "class_version": class_version,
        "fields": fields,
    }
    return hashlib.sha256(canonical_json(envelope)).hexdigest()


def roll(rolling: str, notification_id: int, digest: str) -> str:
    """The rolling log digest after one more event: sha256(previous || id || digest)."""
    return hashlib.sha256(
        bytes.fromhex(rolling)
        + notification_id.to_bytes(8, "big", signed=True)
        + bytes.fromhex(digest)
    ).hexdigest()


def broken_link(events: Sequence[Any], transcoder: Transcoder) -> str | None:
    """Why one aggregate's events, oldest first, do not chain, or None if they do.

    The rules verify applies: versions follow 1, 2, 3...; an event without
    ``previous_hash`` only before the aggregate's first chained event; each
    ``previous_hash`` the digest of the event before (``GENESIS`` first), or its
    v1 digest before the aggregate's first v2 link. The ledger checks a payout
    this way before it pays for a new attempt on it.
    """
    previous: Any = None
    chained = v2_linked = False
    for event in events:
        version = event.originator_version
        expected_version = 1 if previous is None else previous.originator_version + 1
        if version != expected_version:
            return f"version {version} follows version {expected_version - 1}"
        link = getattr(event, "previous_hash", None)
        if link is None:
            if chained:
                return f"version {version} has no previous_hash after chained events"
        elif previous is None:
            if link != GENESIS:
                return "the first event's previous_hash is not GENESIS"
            chained = True
        elif link == event_digest(previous):
            chained = v2_linked = True
        elif v2_linked or link != _stored_legacy_digest(previous, transcoder):
            return f"version {version}'s previous_hash is not version {version - 1}'s digest"
        else:
            chained = True
        previous = event
    return None


def _stored_legacy_digest(event: Any, transcoder: Transcoder) -> str | None:
    stored = as_stored(event)
    if stored is None:
        return None
    try:
        state = transcoder.decode(stored.plaintext)
    except Exception:
        return None
    return legacy_digest(
        get_topic(type(event)), event.originator_id, event.originator_version, state
    )


class ChainedAggregate(Aggregate):
    """An aggregate whose events are chained by hash; the ledger's aggregates derive from it.

    ``previous_hash`` is ``None`` only on events stored before chaining existed
    (a legacy prefix); [`verify`][payout_ledger.audit.verify.verify_ledger]
    counts those and relies on seals for them.
    """

    class Event(Aggregate.Event):
        previous_hash: str | None = field(default=None, kw_only=True)
        """The digest of the aggregate's previous event; GENESIS for the first; None if legacy."""

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
