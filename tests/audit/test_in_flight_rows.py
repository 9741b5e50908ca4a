"""``InFlightRows``: the rows of payouts in flight a report makes when they are listed.

Whatever is asked of it (its length, an index, a slice, iteration, equality), in
whatever order, it answers as the list of the same rows does, and it reads no more
of its rows than the question needs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payout_ledger.audit import InFlightPayout
from payout_ledger.audit.report import InFlightRows


def rows(n: int) -> list[InFlightPayout]:
    return [InFlightPayout(f"es_{i}", f"p{i}", 1, 100 + i, "eur", i + 1) for i in range(n)]


class Counted:
    """An iterator over ``rows`` that counts how many were read."""

    def __init__(self, items: list[InFlightPayout]) -> None:
        self.items, self.read = items, 0

    def __iter__(self) -> Iterator[InFlightPayout]:
        return self

    def __next__(self) -> InFlightPayout:
        if self.read == len(self.items):
            raise StopIteration
        self.read += 1
        return self.items[self.read - 1]


questions = st.one_of(
    st.tuples(st.just("index"), st.integers(-12, 12)),
    st.tuples(
        st.just("slice"),
        st.one_of(st.none(), st.integers(-12, 12)),
        st.one_of(st.none(), st.integers(-12, 12)),
        st.sampled_from([None, 1, 2, -1, -3]),
    ),
    st.tuples(st.just("iter")),
    st.tuples(st.just("len")),
    st.tuples(st.just("eq")),
)


@settings(max_examples=500)
@given(n=st.integers(0, 10), asked=st.lists(questions, max_size=6))
def test_answers_as_the_list_of_its_rows(n: int, asked: list[tuple[object, ...]]) -> None:
    expected = rows(n)
    source = Counted(expected)
    lazy = InFlightRows(n, source)
    needed = 0  # the most rows any question so far needed
    for question in asked:
        if question[0] == "index":
            i = question[1]
            assert isinstance(i, int)
            if -n <= i < n:
                assert lazy[i] == expected[i]
                needed = max(needed, n if i < 0 else i + 1)
                assert source.read == needed
            else:
                with pytest.raises(IndexError):
                    lazy[i]
        elif question[0] == "slice":
            part = slice(*question[1:])
            assert lazy[part] == expected[part]
            needed = source.read
        elif question[0] == "iter":
            assert list(lazy) == expected
            needed = n
        elif question[0] == "len":
            assert len(lazy) == n and source.read == needed
        else:
            assert lazy == expected and expected == lazy and lazy == tuple(expected)
            assert lazy != [*expected, *rows(1)]
            needed = n
    assert len(lazy) == n and list(lazy) == expected


def test_reads_only_what_a_question_needs() -> None:
    source = Counted(rows(10_000))
    lazy = InFlightRows(10_000, source)
    assert len(lazy) == 10_000 and source.read == 0
    assert lazy[:20] == rows(20) and source.read == 20
    assert lazy[3] == rows(4)[3] and source.read == 20
    assert lazy[-1] == rows(10_000)[-1] and source.read == 10_000
    assert lazy != "not rows"


def test_fewer_rows_than_announced_is_an_error_not_a_short_list() -> None:
    lazy = InFlightRows(3, iter(rows(2)))
    with pytest.raises(ValueError, match="3 rows in flight were announced, 2 read"):
        list(lazy)


def test_copied_and_pickled_as_its_rows() -> None:
    """A report holding rows not yet made can still be copied and pickled (its rows are
    made then): a generator alone could be neither."""
    import copy
    import dataclasses
    import pickle

    from payout_ledger.audit import AuditReport

    report = AuditReport(in_flight=InFlightRows(3, (row for row in rows(3))))
    assert pickle.loads(pickle.dumps(report)).in_flight == rows(3)  # noqa: S301 - its own bytes
    assert copy.deepcopy(report).in_flight == rows(3)
    assert copy.copy(report.in_flight) == rows(3)
    assert dataclasses.replace(report).in_flight == rows(3)
    assert list(dataclasses.asdict(report)["in_flight"]) == rows(3)


def test_read_by_several_threads_at_once() -> None:
    """Threads listing one report's rows at the same time each get every row, and none
    of them breaks the sequence for the others (its rows come from one generator)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    expected = rows(20_000)

    def made() -> Iterator[InFlightPayout]:
        for row in expected:
            yield InFlightPayout(*(getattr(row, name) for name in row.__slots__))

    lazy = InFlightRows(len(expected), made())
    start = threading.Barrier(8)

    def reader(_: int) -> bool:
        start.wait()
        return list(lazy) == expected

    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(reader, range(8)))  # a reader's error is raised here
    assert seen == [True] * 8
