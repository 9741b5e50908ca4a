"""Instrumenting a ledger at its I/O points, without touching library code.

The ledger's I/O points are its recorder's ``select_events``, ``insert_events``
and ``select_notifications`` (every load, save and scan goes through them) and
its gateway's ``create_transfer``, ``list_transfers``, ``create_reversal`` and
``list_reversals``. ``instrument`` routes
each call through a *hook* ``hook(label, call)``, which may run ``call()``,
refuse to, or do something before and after: crash plans (the state machine)
and the deterministic scheduler (the interleaving explorer) are such hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from payout_ledger import PayoutLedger, TransferRequest, TransferResult
from payout_ledger.service.ports import (
    ReversalCreated,
    ReversalRequest,
    StripeReversal,
    StripeTransfer,
)
from tests.reliability.system import SimulatedCrash

Hook = Callable[[str, Callable[[], Any]], Any]

RECORDER_METHODS = ("select_events", "insert_events", "select_notifications")


def instrument_recorder(ledger: PayoutLedger, hook: Hook) -> None:
    """Route the ledger's recorder calls through ``hook`` (labels ``db.<method>``)."""
    recorder = ledger.recorder
    for name in RECORDER_METHODS:
        inner = getattr(recorder, name)

        def wrapped(*args: Any, _inner: Any = inner, _label: str = f"db.{name}", **kw: Any) -> Any:
            return hook(_label, lambda: _inner(*args, **kw))

        setattr(recorder, name, wrapped)


class HookedGateway:
    """A transfer and reversal gateway whose calls go through ``hook`` (labels
    ``stripe.<method>``)."""

    def __init__(self, inner: Any, hook: Hook) -> None:
        self.inner = inner
        self.hook = hook
        self.livemode = getattr(inner, "livemode", None)

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        result: TransferResult = self.hook(
            "stripe.create_transfer", lambda: self.inner.create_transfer(request)
        )
        return result

    def list_transfers(self, **filters: Any) -> Iterable[StripeTransfer]:
        found: list[StripeTransfer] = self.hook(
            "stripe.list_transfers", lambda: list(self.inner.list_transfers(**filters))
        )
        return found

    def create_reversal(self, request: ReversalRequest) -> ReversalCreated:
        created: ReversalCreated = self.hook(
            "stripe.create_reversal", lambda: self.inner.create_reversal(request)
        )
        return created

    def list_reversals(self, transfer_id: str) -> Iterable[StripeReversal]:
        found: list[StripeReversal] = self.hook(
            "stripe.list_reversals", lambda: list(self.inner.list_reversals(transfer_id))
        )
        return found


class CrashPlan:
    """A hook that kills the caller at its ``at``-th I/O call, before or after it runs.

    "After" means the call took effect (a save committed, Stripe executed the
    transfer) and the process died before it could use the answer.
    """

    def __init__(self, at: int, *, after: bool) -> None:
        self.at = at
        self.after = after
        self.calls = 0
        self.fired: str | None = None

    def __call__(self, label: str, call: Callable[[], Any]) -> Any:
        index = self.calls
        self.calls += 1
        if index != self.at:
            return call()
        if not self.after:
            self.fired = f"before {label}"
            raise SimulatedCrash(self.fired)
        self.fired = f"after {label}"
        with contextlib.suppress(Exception):  # the process dies either way
            call()
        raise SimulatedCrash(self.fired)


class SwitchableHook:
    """A hook that delegates to the current plan, or just runs the call."""

    def __init__(self) -> None:
        self.plan: Hook | None = None

    def __call__(self, label: str, call: Callable[[], Any]) -> Any:
        if self.plan is None:
            return call()
        return self.plan(label, call)
