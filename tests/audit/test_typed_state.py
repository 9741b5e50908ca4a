"""The typed reading of stored states takes only what the mapper reads the same way.

Audit, verify and the read model's rebuild read a state in one typed pass
(``payout_ledger.adapters.typed_state``) and trust what it returns; every state it
declines takes the slower readings, so declining is always safe. Here each
example takes a state the ledger wrote (of every event class the log holds) and
changes it, as someone with write access to the database could: a byte flipped,
inserted or removed; a value replaced by any JSON value (transcoded objects of
every type, other types, large integers, escapes); a key removed, added or given
twice; the document re-encoded. Whenever the typed reading takes the result, the
mapper's transcoder must decode it, with no key the class does not declare, to
the same values of the same types, revived times included, and the class's own
version.

Examples: ``PAYOUT_LEDGER_RELIABILITY_TAMPER_EXAMPLES`` (150 by default, 1500 with
``PAYOUT_LEDGER_RELIABILITY=long``), each of 20 changes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
import pytest
from eventsourcing.utils import get_topic, resolve_topic
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from payout_ledger import LedgerSettings, PayoutLedger
from payout_ledger.adapters.typed_state import typed_state
from payout_ledger.audit.stored import LEDGER_EVENT_CLASSES
from payout_ledger.domain.chain import ledger_transcoder
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import CAROL, run_reversal_scenario, run_scenario
from tests.reliability.config import SIZES
from tests.support import ALICE, BOB_NOT_ONBOARDED

CHANGES_PER_EXAMPLE = 20

TYPED = {get_topic(cls): typed_state(cls) for cls in LEDGER_EVENT_CLASSES}


@pytest.fixture(scope="module")
def states() -> list[tuple[str, bytes]]:
    """Every stored state of a log with every kind of event the scenarios write."""
    gateway = InMemoryTransferGateway()
    ledger = PayoutLedger(
        settings=LedgerSettings(store_url="memory://"),
        providers=InMemoryProviderDirectory([ALICE, BOB_NOT_ONBOARDED, CAROL]),
        gateway=gateway,
    )
    run_scenario(ledger, gateway)
    run_reversal_scenario(ledger, gateway)
    ledger.seal()
    return [(n.topic, n.state) for n in ledger.recorder.select_notifications(None, 10_000)]


def test_every_event_class_the_ledger_writes_has_a_typed_reading(
    states: list[tuple[str, bytes]],
) -> None:
    """None falls back for want of a typed reading, and each state written is taken as is."""
    assert all(TYPED.values()), [t for t, r in TYPED.items() if r is None]
    for topic, state in states:
        typed = TYPED[topic]
        assert typed is not None and typed.checked(state) is not None, (topic, state)


transcoded = st.builds(
    lambda t, d: {"_type_": t, "_data_": d},
    st.sampled_from(["datetime_iso", "uuid_hex", "decimal_str", "no_such_type"]),
    st.sampled_from(["2026-03-01T10:00:00+00:00", "noon", "0" * 32, "1.5", ""]) | st.text(),
)
"""A value as a transcoder stores one: of a registered type or not, its text valid or not."""

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | transcoded,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def changed(draw: st.DrawFn, state: bytes) -> bytes:
    """``state`` changed once, at the byte level or the JSON level."""
    kind = draw(st.sampled_from(["flip", "insert", "delete", "value", "remove", "add", "twice",
                                 "time", "object", "encode"]))  # fmt: skip
    event(kind)
    if kind in ("flip", "insert", "delete"):
        at = draw(st.integers(0, len(state) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        if kind == "flip":
            return state[:at] + byte + state[at + 1 :]
        if kind == "insert":
            return state[:at] + byte + state[at:]
        return state[:at] + state[at + 1 :]
    document = json.loads(state)
    key = draw(st.sampled_from(sorted(document)))
    if kind == "value":
        document[key] = draw(json_values)
    elif kind == "remove":
        del document[key]
    elif kind == "add":
        document[draw(st.text(max_size=12))] = draw(json_values)
    elif kind == "twice":  # a key given again, last (json reads the last)
        value = json.dumps(draw(json_values)).encode()
        return state[:-1] + b"," + json.dumps(key).encode() + b":" + value + b"}"
    elif kind == "object":  # an object value (a time, headers) replaced by a transcoded one
        objects = [k for k, v in document.items() if isinstance(v, dict)]
        if objects:
            document[draw(st.sampled_from(objects))] = draw(transcoded)
    elif kind == "time":
        times = [k for k, v in document.items() if isinstance(v, dict) and "_data_" in v]
        if times:
            document[draw(st.sampled_from(times))]["_data_"] = draw(
                st.sampled_from(["2026-W09-7T10:00:00", "2026-03-01 10:00", "24:00", "noon"])
                | st.text(max_size=30)
            )
    ascii_only = draw(st.booleans())
    spaced = draw(st.booleans())
    return json.dumps(
        document, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":")
    ).encode()


def as_the_mapper_reads(state: bytes) -> dict[str, Any]:
    """The state the mapper builds the event from (raises where it fails)."""
    decoded = ledger_transcoder().decode(state)
    assert type(decoded) is dict
    return decoded


@settings(
    max_examples=SIZES.tamper_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_what_the_typed_reading_takes_the_mapper_reads_the_same(
    states: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    for _ in range(CHANGES_PER_EXAMPLE):
        topic, state = data.draw(st.sampled_from(states))
        typed = TYPED[topic]
        assert typed is not None
        changed_state = data.draw(changed(state))
        read = typed.checked(changed_state)
        if read is None:
            continue  # declined: the slower readings decide
        event(f"taken after a change: {topic.split(':')[1]}")
        cls = resolve_topic(topic)
        expected = as_the_mapper_reads(changed_state)
        assert expected.pop("class_version", 1) == getattr(cls, "class_version", 1)
        revivers = dict(typed.revivers)
        declared = [f.name for f in dataclasses.fields(cls)]
        assert set(expected) <= set(declared), "a key the class does not declare was taken"
        for name in declared:
            if name in ("originator_id", "originator_version"):
                continue
            value = getattr(read, name)
            if value is msgspec.UNSET:
                assert name not in expected
                continue
            if name in revivers:
                value = revivers[name](value)
            assert name in expected
            assert type(value) is type(expected[name]), (name, value, expected[name])
            assert value == expected[name], name
