"""A webhook body, parsed as Stripe events are: JSON, an event's shape, bounded depth.

Run only after the signature has been verified on the raw bytes
(see [`WebhookHandler`][payout_ledger.stripe.webhooks.WebhookHandler]).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

__all__ = ["MAX_JSON_DEPTH", "is_identifier", "parse_event"]

logger = logging.getLogger("payout_ledger.webhooks")

MAX_JSON_DEPTH: Final = 64
"""Deepest nesting of objects and arrays accepted in an event."""

_MAX_IDENTIFIER_LENGTH = 255


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_event(raw_body: bytes) -> dict[str, Any] | str:
    """The event dict, or why it is refused (``malformed_json``, ``not_an_event``)."""
    try:
        event = json.loads(raw_body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too
        logger.warning("stripe webhook rejected (400): body is not JSON")
        return "malformed_json"
    if not is_event(event) or not within_depth(event):
        logger.warning("stripe webhook rejected (400): JSON is not a Stripe event object")
        return "not_an_event"
    return event  # type: ignore[no-any-return]


def is_identifier(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_IDENTIFIER_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def is_event(event: object) -> bool:
    if not isinstance(event, dict):
        return False
    data = event.get("data")
    account = event.get("account")
    return (
        is_identifier(event.get("id"))
        and is_identifier(event.get("type"))
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
        and (account is None or isinstance(account, str))
    )


def within_depth(value: object) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = list(item)
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True
