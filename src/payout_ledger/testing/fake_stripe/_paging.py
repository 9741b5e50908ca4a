"""Stripe list objects: newest first, ``limit`` and cursor paging."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from ._errors import ParamError, resource_missing
from ._forms import Params
from ._params import int_param, str_param
from ._resources import JSON

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "Listable", "page"]

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10


class Listable(Protocol):
    """An object that can appear in a list: ordered by ``(created, seq)``."""

    id: str
    created: int
    seq: int

    def to_json(self) -> JSON:
        """Render the object."""
        ...


T = TypeVar("T", bound=Listable)


def page(
    items: Sequence[T],
    wanted: Callable[[T], bool],
    params: Params,
    url: str,
    kind: str,
) -> JSON:
    """Render one page of a Stripe list, newest first.

    ``starting_after`` pages toward older objects, ``ending_before`` toward
    newer ones; the cursor object need not match the filters.
    """
    limit = int_param(params, "limit", minimum=1, maximum=MAX_PAGE_SIZE)
    limit = DEFAULT_PAGE_SIZE if limit is None else limit
    after = str_param(params, "starting_after")
    before = str_param(params, "ending_before")
    if after is not None and before is not None:
        raise ParamError(
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="starting_after",
            code="parameters_exclusive",
        )

    def order(item: T) -> tuple[int, int]:
        return (item.created, item.seq)

    by_id = {item.id: item for item in items}
    newest_first = sorted((i for i in items if wanted(i)), key=order, reverse=True)
    if after is not None:
        cursor = _cursor(by_id, after, "starting_after", kind)
        older = [i for i in newest_first if order(i) < order(cursor)]
        chosen, has_more = older[:limit], len(older) > limit
    elif before is not None:
        cursor = _cursor(by_id, before, "ending_before", kind)
        newer = [i for i in newest_first if order(i) > order(cursor)]
        chosen, has_more = newer[-limit:], len(newer) > limit
    else:
        chosen, has_more = newest_first[:limit], len(newest_first) > limit
    return {
        "object": "list",
        "data": [item.to_json() for item in chosen],
        "has_more": has_more,
        "url": url,
    }


def _cursor(by_id: Mapping[str, T], object_id: str, param: str, kind: str) -> T:
    cursor = by_id.get(object_id)
    if cursor is None:
        raise resource_missing(kind, object_id, param=param, status=400)
    return cursor
