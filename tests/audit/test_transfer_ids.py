"""``TransferIds``: transfer ids kept as 64-bit hashes in buckets, saved and restored.

A checkpoint holds the hashes bucket after bucket with a count per bucket; a run
from it records new ids beside them and must find an id recorded twice whether
both uses are new, or one was saved. Property-tested against a plain set of ids.
"""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payout_ledger.audit.rules import TransferIds, transfer_hash

ids = st.lists(st.text(alphabet="abcdef0123", min_size=1, max_size=6), max_size=60)


def saved_and_restored(recorded: TransferIds) -> TransferIds:
    """What a checkpoint of ``recorded`` gives back (its hashes found unique when saved)."""
    chunks = b"".join(recorded.chunks(size=64))  # small chunks: many of them
    return TransferIds.restore(set(), {}, chunks, recorded.counts().tobytes())


def duplicated(first: list[str], then: list[str]) -> set[int]:
    seen: set[str] = set()
    found: set[int] = set()
    for transfer_id in [*first, *then]:
        if transfer_id in seen:
            found.add(transfer_hash(transfer_id))
        seen.add(transfer_id)
    return found


@settings(max_examples=200, deadline=None)
@given(first=ids, then=ids)
def test_a_run_from_saved_hashes_finds_what_one_run_over_all_finds(
    first: list[str], then: list[str]
) -> None:
    """Ids recorded before the save (unique, as a checkpoint's are) then after it: the
    suspects are the ids used twice, exactly as one run recording them all finds."""
    first = list(dict.fromkeys(first))
    before = TransferIds()
    for key, transfer_id in enumerate(first):
        before.record(transfer_id, key)
    assert before.suspects() == set()
    after = saved_and_restored(before)
    assert after.counts() == before.counts()
    for key, transfer_id in enumerate(then):
        after.record(transfer_id, 1000 + key)
    one_run = TransferIds()
    for key, transfer_id in enumerate([*first, *then]):
        one_run.record(transfer_id, key)
    assert after.suspects() == one_run.suspects() == duplicated(first, then)
    assert after.suspects() == set()  # checked buckets are not read again
    assert sum(after.counts()) == len(first) + len(then)
    if not duplicated(first, then):  # saved again (a checkpoint's hashes are unique)
        again = saved_and_restored(after)
        assert again.counts() == after.counts()
        for transfer_id in [*first, *then]:  # every one of them, used again
            again.record(transfer_id, -1)
        assert again.suspects() == {transfer_hash(t) for t in [*first, *then]}


def test_saved_hashes_of_another_form_are_refused() -> None:
    recorded = TransferIds()
    recorded.record("tr_1", 1)
    chunks = b"".join(recorded.chunks())
    counts = recorded.counts()
    with pytest.raises(ValueError, match="another form"):
        TransferIds.restore(set(), {}, chunks + bytes(8), counts.tobytes())
    with pytest.raises(ValueError, match="another form"):
        TransferIds.restore(set(), {}, chunks, array("I", counts[:-1]).tobytes())
