"""The filter that tells a bounded reader whether it may have seen an aggregate before.

Audit and verify keep state for the aggregates seen last only. For any other,
the filter answers "certainly never seen" (nothing to rebuild) or "maybe seen"
(rebuild it from the log: one query). A wrong "never" would lose an
aggregate's history, so it must never happen; a wrong "maybe" only costs a
query, so it must be rare.
"""

from __future__ import annotations

import random
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from payout_ledger.audit.stored import SeenFilter, filter_bits


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.uuids(), min_size=1, max_size=300),
    bits=st.sampled_from([8, 64, 1 << 12, 1 << 16]),
)
def test_an_aggregate_seen_is_never_taken_for_a_new_one(ids: list[UUID], bits: int) -> None:
    seen = SeenFilter(bits)
    for uuid in ids:
        seen.add(uuid.int)
    assert all(seen.add(uuid.int) for uuid in ids)


def test_a_new_aggregate_is_rarely_taken_for_one_seen() -> None:
    """At the size the tools give it (16 bits an event), fewer than one new aggregate
    in 400 is a "maybe" that costs a query."""
    rng = random.Random(20261201)
    events = 100_000
    bits = filter_bits(events)
    seen = SeenFilter(bits)
    for _ in range(events * 3 // 10):  # a payout is about 3.3 events
        seen.add(UUID(int=rng.getrandbits(128), version=5).int)

    tried = 20_000  # each marked too: the filter fills a little as they are tried
    maybes = sum(seen.add(UUID(int=rng.getrandbits(128), version=5).int) for _ in range(tried))

    assert maybes < tried / 400  # with one bit per aggregate: 361, about 1 in 55
