"""Faults that tests program into the fake, per request.

Build one with `latency`, `server_error`, `rate_limited`,
`drop_before_commit` or `drop_after_commit` and hand it to
``FakeStripe.inject``.  A request can trigger one *outcome* fault (everything
but latency) plus any number of latency faults, whose delays add up.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass

__all__ = [
    "DropAfterCommit",
    "DropBeforeCommit",
    "Fault",
    "FaultRule",
    "Latency",
    "RateLimited",
    "ServerError",
    "drop_after_commit",
    "drop_before_commit",
    "latency",
    "rate_limited",
    "server_error",
]


@dataclass(frozen=True)
class Latency:
    """Hold the request ``seconds`` before the endpoint runs (or before a
    replayed, rate-limited or dropped request is answered).

    For a POST this happens while the request holds its idempotency key, so a
    concurrent request with the same key gets Stripe's 409 meanwhile.  A
    request refused before that point (bad key, 409, auth) is not delayed.
    """

    seconds: float


@dataclass(frozen=True)
class ServerError:
    """Answer 500 ``api_error`` instead of executing the endpoint.

    The 500 is saved under the idempotency key, as Stripe saves a 500 produced
    while executing: retrying with the same key replays it.
    """


@dataclass(frozen=True)
class RateLimited:
    """Answer 429 ``rate_limit`` before anything runs; nothing is saved.

    ``retry_after`` (seconds) adds a ``Retry-After`` header and ``should_retry``
    a ``Stripe-Should-Retry`` one (``true`` or ``false``); Stripe documents
    neither on a ``rate_limit`` 429, so by default neither is sent.
    """

    retry_after: float | None = None
    should_retry: bool | None = None


@dataclass(frozen=True)
class DropBeforeCommit:
    """Close the TCP connection without a response; nothing is executed."""


@dataclass(frozen=True)
class DropAfterCommit:
    """Execute and commit, save the idempotent response, then close the
    connection without sending it."""


Fault = Latency | ServerError | RateLimited | DropBeforeCommit | DropAfterCommit
"""Any fault that ``FakeStripe.inject`` accepts."""


def latency(seconds: float) -> Latency:
    """Delay matching requests by ``seconds``."""
    if seconds < 0:
        raise ValueError("latency must not be negative")
    return Latency(seconds)


def server_error() -> ServerError:
    """Fail matching requests with a stored 500."""
    return ServerError()


def rate_limited(
    *, retry_after: float | None = None, should_retry: bool | None = None
) -> RateLimited:
    """Refuse matching requests with a 429 (optionally with ``Retry-After`` and
    ``Stripe-Should-Retry`` headers)."""
    if retry_after is not None and retry_after < 0:
        raise ValueError("retry_after must not be negative")
    return RateLimited(retry_after, should_retry)


def drop_before_commit() -> DropBeforeCommit:
    """Drop the connection of matching requests before they execute."""
    return DropBeforeCommit()


def drop_after_commit() -> DropAfterCommit:
    """Drop the connection of matching requests after they committed."""
    return DropAfterCommit()


class FaultRule:
    """One injected fault: what it does, which requests it hits, how often.

    ``method`` and ``path`` of ``None`` match anything; ``path`` may use
    shell-style wildcards (``/v1/transfers/*/reversals``).  ``times=None``
    keeps the rule forever.
    """

    def __init__(
        self,
        fault: Fault,
        *,
        method: str | None,
        path: str | None,
        times: int | None,
        lock: threading.Lock,
    ) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for always")
        self.fault = fault
        self.method = method.upper() if method is not None else None
        self.path = path
        self._remaining = times
        self._triggered = 0
        self._lock = lock

    @property
    def triggered(self) -> int:
        """How many requests this rule has hit so far."""
        with self._lock:
            return self._triggered

    @property
    def remaining(self) -> int | None:
        """How many more requests it will hit (``None``: unlimited)."""
        with self._lock:
            return self._remaining

    def cancel(self) -> None:
        """Stop this rule from hitting any further request."""
        with self._lock:
            self._remaining = 0

    def _matches(self, method: str, path: str) -> bool:
        if self._remaining == 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path is None or fnmatch.fnmatchcase(path, self.path)

    def _consume(self) -> None:
        self._triggered += 1
        if self._remaining is not None:
            self._remaining -= 1


@dataclass(frozen=True)
class TriggeredFaults:
    """The faults one request drew: total delay and at most one outcome."""

    delay: float = 0.0
    outcome: ServerError | RateLimited | DropBeforeCommit | DropAfterCommit | None = None


class FaultPlan:
    """The thread-safe, ordered set of rules the fake consults per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(
        self, fault: Fault, *, method: str | None, path: str | None, times: int | None
    ) -> FaultRule:
        """Add a rule after the existing ones and return it."""
        rule = FaultRule(fault, method=method, path=path, times=times, lock=self._lock)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Cancel and forget every rule."""
        with self._lock:
            for rule in self._rules:
                rule._remaining = 0
            self._rules.clear()

    def draw(self, method: str, path: str) -> TriggeredFaults:
        """Consume the rules that hit this request and return their effect.

        Every matching latency rule is consumed; of the matching outcome rules
        only the first, in injection order, is consumed.
        """
        delay = 0.0
        outcome: ServerError | RateLimited | DropBeforeCommit | DropAfterCommit | None
        outcome = None
        with self._lock:
            for rule in self._rules:
                if not rule._matches(method, path):
                    continue
                if isinstance(rule.fault, Latency):
                    delay += rule.fault.seconds
                elif outcome is None:
                    outcome = rule.fault
                else:
                    continue
                rule._consume()
            self._rules = [rule for rule in self._rules if rule._remaining != 0]
        return TriggeredFaults(delay, outcome)
