"""Fuzzed tampering: every change to a sealed row is caught by verify with the anchors.

A log with every kind of event (paid, declined and retried, failed, in flight,
settled by a webhook, reversed twice, a captured payment, Stripe event records)
is sealed twice and both seal digests are anchored. Each example restores that
log, applies **one** mutation to one row covered by the second seal (the seal
rows included), as someone with write access to the database could, and
requires that ``verify_ledger(ledger, anchors=...)`` reports a problem and that
verify, seal, export and audit all run to the end.

Mutations: at the byte level, flip, insert or delete a byte of the stored state;
change the topic, originator id or version column; delete the row; copy it
under a free notification id inside the sealed range, or below 1. At the JSON
level, edit a value, add or remove a key (at any depth), reorder keys, or
re-encode the same document (other whitespace, a ``\\u`` escape, ``5000.0`` for
``5000``).

Examples per store: ``PAYOUT_LEDGER_RELIABILITY_TAMPER_EXAMPLES`` (150 by
default, 1500 with ``PAYOUT_LEDGER_RELIABILITY=long``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from payout_ledger import PayoutAggregate, PayoutLedger
from payout_ledger.audit import (
    audit_ledger,
    export_events,
    export_payouts,
    seal_ledger,
    verify_ledger,
)
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.domain.stripe_events import CapturedPayment, StripeEventRecord
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import release, run_reversal_scenario, run_scenario
from tests.audit.support import RawRow, RawStore, notification_ids
from tests.reliability.config import SIZES
from tests.reliability.figures import FIGURES

SECTION = "tamper"
TOPICS = [
    PayoutAggregate.PayoutStarted.TOPIC,
    PayoutAggregate.TransferFailed.TOPIC,
    PayoutAggregate.TransferSucceeded.TOPIC,
    PayoutAggregate.Released.TOPIC,
    PayoutAggregate.TransferReversed.TOPIC,
    StripeEventRecord.StripeEventReceived.TOPIC,
    CapturedPayment.PaymentCaptured.TOPIC,
    LedgerSeal.Sealed.TOPIC,
    "payout_ledger:NoSuchEvent",
    "builtins:dict",
]
BYTE_LEVEL = [
    "flip_byte",
    "insert_byte",
    "delete_byte",
    "topic",
    "originator_id",
    "originator_version",
    "delete_row",
    "copy_into_gap",
    "copy_below_one",
]
JSON_LEVEL = [
    "edit_value",
    "add_key",
    "remove_key",
    "reorder_keys",
    "whitespace",
    "escape",
    "int_as_float",
]
FUZZ = settings(
    max_examples=SIZES.tamper_examples,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    """Only stores an attacker can edit: SQLite and PostgreSQL."""
    return durable_store_url


class SealedLog:
    """The sealed log, as rows (a plain class: Hypothesis prints it short)."""

    def __init__(
        self, rows: list[RawRow], covered: list[RawRow], gap: list[int], anchors: list[str]
    ) -> None:
        self.rows = rows
        """Every stored row, in notification order."""
        self.covered = covered
        """The rows covered by the second (anchored) seal, its own row included."""
        self.gap = gap
        """Free notification ids inside the sealed range."""
        self.anchors = anchors

    def __repr__(self) -> str:
        return f"SealedLog({len(self.rows)} rows, {len(self.covered)} sealed, gap {self.gap})"


@pytest.fixture
def sealed_log(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, durable_store_url: str
) -> SealedLog:
    raw = RawStore(durable_store_url)
    run_scenario(ledger, gateway)
    run_reversal_scenario(ledger, gateway)  # platform reversals: their bytes are attacked too
    ledger.release_payment(release("es_gap"))
    ledger.release_payment(release("es_after_gap", amount=4200))
    gap = notification_ids(ledger, ledger.payout_id("es_gap"))
    for nid in gap:  # a payout removed before sealing: free ids inside the sealed range
        raw.delete(nid)
    first = ledger.seal()
    gateway.decline_next()
    ledger.release_payment(release("es_late", amount=900))
    ledger.release_payment(release("es_late", amount=900))
    second = ledger.seal()
    ledger.release_payment(release("es_unsealed"))
    rows = raw.rows()
    seal_row = max(r.notification_id for r in rows if r.topic == LedgerSeal.Sealed.TOPIC)
    assert verify_ledger(ledger, anchors=[first.seal_digest, second.seal_digest]).ok
    return SealedLog(
        rows=rows,
        covered=[r for r in rows if r.notification_id <= seal_row],
        gap=gap,
        anchors=[first.seal_digest, second.seal_digest],
    )


# A JSON document's places: a path of keys and indexes, to a value or to a key.
Path = tuple[str | int, ...]


def places(value: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    """Every (path, value) in a JSON document, the document itself first."""
    found = [(path, value)]
    if isinstance(value, dict):
        for key, item in value.items():
            found += places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += places(item, (*path, index))
    return found


def at(document: Any, path: Path) -> Any:
    for step in path:
        document = document[step]
    return document


def dump(
    value: Any,
    path: Path = (),
    *,
    separators: tuple[str, str] = (",", ":"),
    escape: tuple[Path, bool] | None = None,
    as_float: Path | None = None,
) -> str:
    """JSON as the transcoder writes it, unless told to escape a string or write an int as float.

    ``escape`` is (path, whether the key at that path rather than its value).
    """
    item_sep, key_sep = separators

    def string(text: str, escaped: bool) -> str:
        if not escaped or not text or ord(text[0]) > 0xFFFF:
            return json.dumps(text, ensure_ascii=False)
        return f'"\\u{ord(text[0]):04x}' + json.dumps(text[1:], ensure_ascii=False)[1:]

    def inner(value: Any, path: Path) -> str:
        if isinstance(value, dict):
            return (
                "{"
                + item_sep.join(
                    string(k, escape == ((*path, k), True)) + key_sep + inner(v, (*path, k))
                    for k, v in value.items()
                )
                + "}"
            )
        if isinstance(value, list):
            return "[" + item_sep.join(inner(v, (*path, i)) for i, v in enumerate(value)) + "]"
        if isinstance(value, str):
            return string(value, escape == (path, False))
        if isinstance(value, int) and not isinstance(value, bool) and as_float == path:
            return f"{value}.0"
        return json.dumps(value)

    return inner(value, path)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def pick(draw: st.DrawFn, items: list[Any]) -> Any:
    """One of ``items``, drawn by index (so failing examples print short)."""
    assume(items)
    return items[draw(st.integers(0, len(items) - 1))]


def json_mutation(draw: st.DrawFn, kind: str, document: dict[str, Any]) -> bytes:
    """The document changed (or re-encoded) one way, as bytes."""
    everywhere = places(document)
    dicts = [(p, v) for p, v in everywhere if isinstance(v, dict)]
    if kind == "edit_value":
        path, _ = pick(draw, everywhere[1:])
        parent = at(document, path[:-1])
        parent[path[-1]] = draw(json_values)
    elif kind == "add_key":
        _, target = pick(draw, dicts)
        key = draw(st.text(max_size=12).filter(lambda k: k not in target))
        target[key] = draw(json_values)
    elif kind == "remove_key":
        _, target = pick(draw, [(p, d) for p, d in dicts if d])
        del target[draw(st.sampled_from(sorted(target)))]
    elif kind == "reorder_keys":
        path, target = pick(draw, [(p, d) for p, d in dicts if len(d) > 1])
        order = draw(st.permutations(list(target)))
        reordered = {k: target[k] for k in order}
        if path:
            at(document, path[:-1])[path[-1]] = reordered
        else:
            document = reordered
    elif kind == "whitespace":
        separators = draw(st.sampled_from([(", ", ": "), (",", ": "), (" ,", ":"), (",\n", ":")]))
        return dump(document, separators=separators).encode()
    elif kind == "escape":
        strings = [(p, False) for p, v in everywhere if isinstance(v, str) and v]
        keys = [(p, True) for p, _ in everywhere[1:] if isinstance(p[-1], str) and p[-1]]
        return dump(document, escape=draw(st.sampled_from(strings + keys))).encode()
    elif kind == "int_as_float":
        ints = [p for p, v in everywhere if isinstance(v, int) and not isinstance(v, bool)]
        assume(ints)
        return dump(document, as_float=draw(st.sampled_from(ints))).encode()
    return dump(document).encode()


@dataclass(frozen=True)
class Mutation:
    kind: str
    notification_id: int
    """The row changed (or deleted, or copied)."""
    rows: list[RawRow] = field(repr=False)
    """The whole table after the mutation."""


@st.composite
def mutations(draw: st.DrawFn, log: SealedLog) -> Mutation:
    """One mutation of one row covered by the anchored seal."""
    kind, row, rows = draw(changes(log))
    return Mutation(kind, row.notification_id, rows)


@st.composite
def changes(draw: st.DrawFn, log: SealedLog) -> tuple[str, RawRow, list[RawRow]]:
    kind = draw(st.sampled_from(BYTE_LEVEL + JSON_LEVEL))
    row = log.covered[draw(st.integers(0, len(log.covered) - 1))]  # an index: a short repr
    rows = [r for r in log.rows if r is not row]
    state = row.state
    if kind == "flip_byte":
        i = draw(st.integers(0, len(state) - 1))
        state = state[:i] + bytes([state[i] ^ draw(st.integers(1, 255))]) + state[i + 1 :]
    elif kind == "insert_byte":
        i = draw(st.integers(0, len(state)))
        state = state[:i] + bytes([draw(st.integers(0, 255))]) + state[i:]
    elif kind == "delete_byte":
        i = draw(st.integers(0, len(state) - 1))
        state = state[:i] + state[i + 1 :]
    elif kind in JSON_LEVEL:
        state = json_mutation(draw, kind, json.loads(row.state))
    if kind == "topic":
        topic = draw(st.sampled_from([t for t in TOPICS if t != row.topic]))
        return kind, row, [*rows, replace(row, topic=topic)]
    if kind == "originator_id":
        others = sorted({r.originator_id for r in log.rows} - {row.originator_id}, key=str)
        new_id = draw(st.sampled_from(others) | st.uuids())
        assume(new_id != row.originator_id)
        return kind, row, [*rows, replace(row, originator_id=new_id)]
    if kind == "originator_version":
        version = draw(st.integers(-2, 12).filter(lambda v: v != row.originator_version))
        return kind, row, [*rows, replace(row, originator_version=version)]
    if kind == "delete_row":
        return kind, row, rows
    if kind in ("copy_into_gap", "copy_below_one"):
        nid = draw(st.sampled_from(log.gap) if kind == "copy_into_gap" else st.integers(-3, 0))
        versions = [r.originator_version for r in log.rows if r.originator_id == row.originator_id]
        if draw(st.booleans()):  # appended to its aggregate
            copy = replace(row, notification_id=nid, originator_version=max(versions) + 1)
        else:  # the first event of a new aggregate
            copy = replace(
                row, notification_id=nid, originator_id=UUID(int=draw(st.integers(1, 2**128 - 1)))
            )
        return kind, row, [*log.rows, copy]
    assume(state != row.state)
    return kind, row, [*rows, replace(row, state=state)]


def unique(rows: list[RawRow]) -> bool:
    """Whether the store would accept the rows (one event per aggregate and version)."""
    keys = {(r.originator_id, r.originator_version) for r in rows}
    return len(keys) == len(rows)


@given(data=st.data())
@FUZZ
def test_every_mutation_of_a_sealed_row_is_caught(
    data: st.DataObject,
    ledger: PayoutLedger,
    sealed_log: SealedLog,
    durable_store_url: str,
) -> None:
    """One mutation of a sealed row: verify with the anchors reports it; nothing raises."""
    raw = RawStore(durable_store_url)
    mutation = data.draw(mutations(sealed_log))
    assume(unique(mutation.rows))
    raw.restore(sorted(mutation.rows, key=lambda r: r.notification_id))

    event(f"mutation: {mutation.kind}")
    report = verify_ledger(ledger, anchors=sealed_log.anchors)

    assert not report.ok
    audit_ledger(ledger)
    audit_ledger(ledger, decode="mapper")
    export_events(ledger, io.StringIO())
    export_events(ledger, io.StringIO(), fmt="csv")
    export_payouts(ledger, io.StringIO())
    seal_ledger(ledger)
    FIGURES.add(SECTION, f"examples: {raw.kind}")
    FIGURES.add(SECTION, f"mutation: {mutation.kind}")
