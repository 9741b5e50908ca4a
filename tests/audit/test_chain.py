"""Every stored event is chained by hash to its aggregate's previous event."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from payout_ledger import PayoutAggregate, PayoutLedger
from payout_ledger.domain.chain import (
    GENESIS,
    ChainedAggregate,
    as_stored,
    canonical_json,
    event_digest,
    state_digest,
)
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.domain.store_mode import StoreModeRecord
from payout_ledger.domain.stripe_events import CapturedPayment, StripeEventRecord
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import run_scenario
from tests.audit.support import replay_all


def _payout() -> PayoutAggregate:
    payout = PayoutAggregate.start(
        event_service_id="es_chain",
        provider_id="prov_alice",
        payee_user_id="user_alice",
        destination_account="acct_alice",
        amount=5000,
        currency="usd",
        started_at=datetime.now(UTC),
    )
    payout.record_transfer(transfer_id="tr_1", request_id=None)
    return payout


def test_each_event_names_the_digest_of_the_one_before() -> None:
    """The first event's previous_hash is GENESIS; each next one the digest of its predecessor."""
    events: list[Any] = list(_payout().collect_events())

    assert events[0].previous_hash == GENESIS
    for before, after in itertools.pairwise(events):
        assert after.previous_hash == event_digest(before)


def test_every_aggregate_the_ledger_stores_is_chained(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Payouts, Stripe event records, captured payments, seals and the store's mode are chained."""
    run_scenario(ledger, gateway)
    ledger.seal()

    aggregates = replay_all(ledger).values()

    kinds = {type(a) for a in aggregates}
    assert kinds == {
        PayoutAggregate,
        StripeEventRecord,
        CapturedPayment,
        LedgerSeal,
        StoreModeRecord,
    }
    assert all(isinstance(a, ChainedAggregate) for a in aggregates)
    for aggregate in aggregates:
        assert aggregate.chain_head == event_digest(aggregate._chain_last)


def test_the_digest_covers_every_field_and_the_envelope() -> None:
    """Changing any field, the version or the topic changes the digest."""
    started: Any = _payout().collect_events()[0]
    digest = event_digest(started)
    fields = [k for k in vars(started) if k != "originator_id"]

    for name in fields:
        forged = object.__new__(type(started))
        value = vars(started)[name]
        changed = value + 1 if isinstance(value, int) else f"{value}x"
        object.__setattr__(forged, "__dict__", {**vars(started), name: changed})
        assert event_digest(forged) != digest, name


def test_canonical_json_ignores_key_order_and_spacing() -> None:
    """Two dicts with the same items encode to the same bytes."""
    moment = datetime.now(UTC)
    first = {"b": [1, 2], "a": {"y": moment, "x": None}}
    second = {"a": {"x": None, "y": moment}, "b": (1, 2)}

    assert canonical_json(first) == canonical_json(second)
    assert b" " not in canonical_json(first)


def test_a_replayed_payout_continues_the_chain_where_it_stopped(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Loading a payout from the store restores its chain head, so the next event links to it."""
    gateway.decline_next()
    ledger.release_payment(
        {
            "event_service_id": "es_1",
            "provider_id": "prov_alice",
            "amount": {"amount": 10, "currency": "usd"},
        }
    )
    stored_last = ledger.history("es_1")[-1]

    ledger.release_payment(
        {
            "event_service_id": "es_1",
            "provider_id": "prov_alice",
            "amount": {"amount": 10, "currency": "usd"},
        }
    )

    history = ledger.history("es_1")
    assert history[len(history) - 3].previous_hash == event_digest(stored_last)


def test_a_fresh_events_digest_is_that_of_the_bytes_it_is_stored_as(
    ledger: PayoutLedger,
) -> None:
    """Chained before saving (TransferSucceeded, Released together); loaded: the same digest."""
    events: list[Any] = list(_payout().collect_events())

    for event in events:
        stored = ledger.mapper.to_stored_event(event)
        loaded = ledger.mapper.to_domain_event(stored)
        assert event_digest(loaded) == event_digest(event)
        assert event_digest(event) == state_digest(
            stored.topic, stored.originator_id, stored.originator_version, stored.state
        )
        assert b"_as_stored" not in stored.state
        assert ledger.mapper.to_stored_event(loaded).state == stored.state  # never stored


def test_a_stored_key_cannot_choose_what_is_digested(ledger: PayoutLedger) -> None:
    """Keys named like the attached digest, or the old ``_stored_form``, are just stored bytes."""
    [started] = PayoutAggregate.start(
        event_service_id="es_keys",
        provider_id="prov_alice",
        payee_user_id="user_alice",
        destination_account="acct_alice",
        amount=5000,
        currency="usd",
        started_at=datetime.now(UTC),
    ).collect_events()
    stored = ledger.mapper.to_stored_event(started)
    state = json.loads(stored.state)
    state["_as_stored"] = {"digest": event_digest(started)}
    state["_stored_form"] = [2, json.loads(stored.state)]
    forged = StoredEvent(
        stored.originator_id, stored.originator_version, stored.topic, json.dumps(state).encode()
    )

    loaded = ledger.mapper.to_domain_event(forged)

    assert event_digest(loaded) != event_digest(started)
    assert event_digest(loaded) == state_digest(
        forged.topic, forged.originator_id, forged.originator_version, forged.state
    )
    stored_as = as_stored(loaded)
    assert stored_as is not None and stored_as.plaintext == forged.state


def test_the_digest_frames_its_parts() -> None:
    """Moving bytes between the topic, the id, the version and the state changes the digest."""
    oid = uuid4()

    digests = {
        state_digest("a:B", oid, 1, b"{}"),
        state_digest("a:B", oid, 11, b"}"),
        state_digest("a:B", str(oid), 1, b"{} "),
        state_digest("a:Bx", oid, 1, b"{}"),
    }

    assert len(digests) == 4
    assert state_digest("a:B", oid, 1, b"{}") == state_digest("a:B", oid.hex, 1, b"{}")
