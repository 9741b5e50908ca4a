"""The ledger's mapper: events stored as the chain predicts, read back with their digest.

[`ChainedMapper`][payout_ledger.adapters.mapper.ChainedMapper] stores each event's
[`stored_state`][payout_ledger.domain.chain.stored_state] and attaches to every event
it loads the digest of the bytes it decoded; the functions below read one
stored event for verify, seal and export without ever raising.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper, MapperDeserialisationError, Notification, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from payout_ledger.domain.chain import (
    _AS_STORED,
    AsStored,
    ChainedAggregate,
    as_stored,
    state_digest,
    stored_state,
)
from payout_ledger.errors import PayoutLedgerError

__all__ = [
    "ChainedMapper",
    "StoredRead",
    "chained_mapper",
    "notification_digest",
    "read_notification",
    "stored_digest",
]


class ChainedMapper(Mapper[UUID]):
    """The ledger's mapper: stores [`stored_state`][payout_ledger.domain.chain.stored_state] and
    attaches each loaded event's digest.

    The digest is computed from the plaintext bytes before they are decoded and
    attached after the event is built, so no stored key can set it.
    """

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        state = stored_state(domain_event)
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=state,
        )

    def plaintext(self, stored_event: StoredEvent) -> bytes:
        """The stored state, decrypted and decompressed."""
        state = stored_event.state
        try:
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
        except Exception as exc:
            raise MapperDeserialisationError(_cannot_read(stored_event, exc)) from exc
        return state

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        return self.from_plaintext(stored_event, self.plaintext(stored_event))

    def from_plaintext(self, stored_event: StoredEvent, plaintext: bytes) -> Any:
        """The event, from its :meth:`plaintext`, upcast, with its digest attached."""
        topic = stored_event.topic
        digest = state_digest(
            topic, stored_event.originator_id, stored_event.originator_version, plaintext
        )
        cls = resolve_topic(topic)
        if get_topic(cls) != topic:
            # eventsourcing resolves other import paths to the same class; an event
            # stored under one is not what the ledger wrote, and readers that
            # select by topic would not see it.
            raise MapperDeserialisationError(
                _cannot_read(stored_event, f"the topic is not {cls.__qualname__}'s own")
            )
        try:
            state = self.transcoder.decode(plaintext)
        except Exception as exc:
            raise MapperDeserialisationError(_cannot_read(stored_event, exc)) from exc
        if not isinstance(state, dict):
            raise MapperDeserialisationError(
                _cannot_read(stored_event, "the state is not a JSON object")
            )
        stored_version = version = state.pop("class_version", 1)
        if type(stored_version) is not int:
            raise MapperDeserialisationError(
                _cannot_read(stored_event, f"class_version {stored_version!r} is not an int")
            )
        originator_id = stored_event.originator_id
        state["originator_id"] = (
            originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))
        )
        state["originator_version"] = stored_event.originator_version
        class_version = getattr(cls, "class_version", 1)
        while version < class_version:
            getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
            version += 1
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        state[_AS_STORED] = AsStored(digest, stored_version, plaintext)
        return event


def _cannot_read(stored_event: StoredEvent, why: object) -> str:
    return (
        f"Failed to deserialise state of stored event with topic '{stored_event.topic}', "
        f"originator_id '{stored_event.originator_id}' and originator_version "
        f"{stored_event.originator_version}: {why}"
    )


@dataclass(frozen=True)
class StoredRead:
    """One stored event as verify and export read it."""

    digest: str
    """Its digest over the stored bytes (of the raw bytes, marked, if they cannot be decrypted)."""
    event: Any
    """The event, or None if it cannot be read."""
    error: Exception | None
    """Why it cannot be read."""
    plaintext: bytes | None
    """The stored state decrypted, if it could be."""


def chained_mapper(ledger: Application[Any]) -> ChainedMapper:
    """The ledger's mapper, which computes digests over the stored bytes."""
    mapper = ledger.mapper
    if not isinstance(mapper, ChainedMapper):
        raise PayoutLedgerError(
            f"the ledger's mapper is a {type(mapper).__name__}: tamper evidence needs "
            "payout_ledger.adapters.mapper.ChainedMapper"
        )
    return mapper


def read_notification(mapper: ChainedMapper, notification: Notification) -> StoredRead:
    """Decrypt, digest and decode one stored event; never raises."""
    try:
        plaintext = mapper.plaintext(notification)
    except Exception as exc:  # the caller reports it
        return StoredRead(_undecodable_digest(notification), None, exc, None)
    try:
        event = mapper.from_plaintext(notification, plaintext)
        if not isinstance(event, ChainedAggregate.Event):
            raise ValueError(f"topic {notification.topic} names no event of the ledger")
        canonical = get_topic(type(event))
        if canonical != notification.topic:
            raise ValueError(
                f"topic {notification.topic} names {type(event).__qualname__}, "
                f"whose topic is {canonical}"
            )
    except Exception as exc:  # the caller reports it
        digest = _plaintext_digest(notification, plaintext)
        return StoredRead(digest, None, exc, plaintext)
    stored = as_stored(event)
    assert stored is not None
    return StoredRead(stored.digest, event, None, plaintext)


def _plaintext_digest(notification: StoredEvent, plaintext: bytes) -> str:
    return state_digest(
        notification.topic, notification.originator_id, notification.originator_version, plaintext
    )


def _undecodable_digest(notification: StoredEvent) -> str:
    """The digest of an event that cannot be decrypted: over its raw bytes, marked."""
    raw = _plaintext_digest(notification, notification.state)
    return hashlib.sha256(b"undecodable:" + raw.encode("ascii")).hexdigest()


def notification_digest(
    mapper: ChainedMapper, notification: Notification
) -> tuple[str, Any, Exception | None]:
    """The stored event's digest, the decoded event, and why it could not be decoded.

    An event that cannot be decoded (event None) still gets a digest, of its
    bytes, so seals over a damaged log are still compared, and still differ.
    """
    read = read_notification(mapper, notification)
    return read.digest, read.event, read.error


def stored_digest(mapper: ChainedMapper, notification: StoredEvent) -> str:
    """The stored event's digest, without decoding it (sealing needs nothing more)."""
    try:
        plaintext = mapper.plaintext(notification)
    except Exception:
        return _undecodable_digest(notification)
    return _plaintext_digest(notification, plaintext)
