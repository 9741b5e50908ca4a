"""The rate governor: every HTTP request to Stripe of a bulk job waits for a token.

A [`RateGovernor`][payout_ledger.service.governor.RateGovernor] takes its tokens
from a [rate budget][payout_ledger.adapters.rate_budget] kept in the ledger's
store, so every process and host using that store stays together under
``bulk_rate_limit x bulk_rate_share`` requests per second, leaving the rest of
Stripe's limit to live traffic.

It governs at the HTTP client, inside the gateway
([`StripeTransferGateway`][payout_ledger.stripe.StripeTransferGateway]'s
transports call [`governed_request`][payout_ledger.service.governor.governed_request]
around every try): transfers, lookups and the SDK's own retries each take a token,
which wrapping the gateway's methods could not see. Outside
[`governed_by`][payout_ledger.service.governor.governed_by] (a single release,
a webhook) nothing waits.

On a 429 the whole budget backs off: ``Retry-After`` when Stripe sends one
(capped at ``bulk_backoff_max``), else exponential from 0.5 s with jitter. A 429
``lock_timeout`` (an object locked by another request, not the rate) holds back
only the request that met it. The same request, with the same idempotency key,
is then sent again after the back-off, at most ``bulk_rate_limit_retries`` times,
each try checking the attempt's send window first; ``Stripe-Should-Retry: false`` is never retried.
The SDK's own retries of a 429 (it retries one only when Stripe says
``Stripe-Should-Retry: true``) are turned off while governed, so the two never
double up. A 429 still standing ends as
[`TransferNotExecuted`][payout_ledger.TransferNotExecuted], as ungoverned.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.rate_budget import RateBudget
from payout_ledger.service.ports import elapsed_seconds

__all__ = [
    "HORIZON_MARGIN",
    "GovernorStats",
    "RateGovernor",
    "RequestNotes",
    "current_governor",
    "governed_by",
    "governed_request",
    "governed_request_async",
    "noting_requests",
]

HORIZON_MARGIN = 60.0
"""Seconds beyond ``backoff_max`` that a token may be scheduled ahead: room for the
takers queued before it. A schedule further ahead (a database clock stepped back,
an edited row) is pulled back to it rather than waited for."""

INITIAL_BACKOFF = 0.5
"""Seconds of the first back-off after a 429 without ``Retry-After`` (as the SDK's)."""

_Response = TypeVar("_Response")


@dataclass
class GovernorStats:
    """What a governor did (its counters only grow; read them with ``snapshot``)."""

    tokens: int = 0
    """Tokens taken: HTTP requests sent under the budget."""
    waited_seconds: float = 0.0
    """Seconds spent waiting for tokens (the budget's pace and its back-offs)."""
    http_seconds: float = 0.0
    """Seconds spent in HTTP requests to Stripe."""
    rate_limited: int = 0
    """Responses 429."""
    retried: int = 0
    """429s sent again by the governor."""
    not_retried: int = 0
    """429s answered ``Stripe-Should-Retry: false``: left to the outcome (not executed)."""
    backoff_seconds: float = 0.0
    """Back-off asked of the budget after 429s, summed."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, float]:
        """The counters now, as a dict."""
        with self._lock:
            return {
                "tokens": self.tokens,
                "waited_seconds": self.waited_seconds,
                "http_seconds": self.http_seconds,
                "rate_limited": self.rate_limited,
                "retried": self.retried,
                "not_retried": self.not_retried,
                "backoff_seconds": self.backoff_seconds,
            }


@dataclass
class RequestNotes:
    """What the governor saw of one ledger call's requests (see ``noting_requests``)."""

    rate_limited: int = 0
    should_not_retry: bool = False
    """Stripe answered a 429 with ``Stripe-Should-Retry: false``."""


class RateGovernor:
    """Takes a token of a shared [`RateBudget`][payout_ledger.adapters.rate_budget.RateBudget]
    before each HTTP request, and backs the whole budget off on a 429.

    ``rate`` is requests per second for all takers of the budget together.
    """

    def __init__(
        self,
        budget: RateBudget,
        *,
        rate: float,
        backoff_max: float = 30.0,
        retries: int = 6,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.budget = budget
        self.rate = rate
        self.interval = 1.0 / rate
        self.backoff_max = backoff_max
        self.horizon = backoff_max + HORIZON_MARGIN
        """The longest one token is waited for (see ``HORIZON_MARGIN``)."""
        self.retries = retries
        self.stats = GovernorStats()
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"RateGovernor(budget={self.budget.name!r}, rate={self.rate:g}/s)"

    def take(self) -> float:
        """Wait for the next token; the seconds waited."""
        wait = self.budget.reserve(self.interval, self.horizon).wait
        if wait > 0:
            self._sleep(wait)
        self.stats.add(tokens=1, waited_seconds=wait)
        _metric("tokens", wait=wait)
        return wait

    async def take_async(self) -> float:
        """[`take`][payout_ledger.service.governor.RateGovernor.take] without blocking
        the event loop (the store's statement runs in a worker thread)."""
        wait = (await asyncio.to_thread(self.budget.reserve, self.interval, self.horizon)).wait
        if wait > 0:
            await asyncio.sleep(wait)
        self.stats.add(tokens=1, waited_seconds=wait)
        _metric("tokens", wait=wait)
        return wait

    def backoff(self, headers: Mapping[str, str] | None, retry: int) -> float:
        """Seconds to back off after the ``retry``-th 429 in a row of one request."""
        given = retry_after(headers)
        if given is not None:
            return min(given, self.backoff_max)
        exponential = min(INITIAL_BACKOFF * 2.0**retry, self.backoff_max)
        return max(INITIAL_BACKOFF, exponential * random.uniform(0.5, 1.0))

    def send(self, send: Callable[[], _Response]) -> _Response:
        """Send one HTTP request under the budget (``send`` returns the SDK's
        ``(body, status, headers)``), again after each 429 that may be retried."""
        retry = 0
        while True:
            self.take()
            response = self._timed(send)
            if not self._retry(response, retry):
                return response
            retry += 1

    async def send_async(self, send: Callable[[], Awaitable[_Response]]) -> _Response:
        """[`send`][payout_ledger.service.governor.RateGovernor.send] for the async transport."""
        retry = 0
        while True:
            await self.take_async()
            started = elapsed_seconds()
            try:
                response = await send()
            finally:
                self.stats.add(http_seconds=elapsed_seconds() - started)
            if not await asyncio.to_thread(self._retry, response, retry):
                return response
            retry += 1

    def _timed(self, send: Callable[[], _Response]) -> _Response:
        started = elapsed_seconds()
        try:
            return send()
        finally:
            self.stats.add(http_seconds=elapsed_seconds() - started)

    def _retry(self, response: Any, retry: int) -> bool:
        """After a response: back the budget off on a 429, and whether to send again."""
        status, headers = _status_and_headers(response)
        if status != 429:
            return False
        notes = _notes.get()
        if notes is not None:
            notes.rate_limited += 1
        delay = self.backoff(headers, retry)
        if _lock_timeout(response):
            # Another request holds the object: only this request waits, not the budget.
            self._sleep(delay)
        else:
            self.budget.block(delay)
        self.stats.add(rate_limited=1, backoff_seconds=delay)
        _metric("rate_limited", wait=delay)
        if _header(headers, "Stripe-Should-Retry") == "false":
            if notes is not None:
                notes.should_not_retry = True
            self.stats.add(not_retried=1)
            return False
        if retry >= self.retries:
            return False
        self.stats.add(retried=1)
        return True


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date measured
    against the response's own ``Date`` (never this host's clock). None when absent
    or unreadable."""
    value = _header(headers, "Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            until, sent = parsedate_to_datetime(value), _header(headers, "Date")
            if sent is None:
                return None
            seconds = (until - parsedate_to_datetime(sent)).total_seconds()
        except (TypeError, ValueError):
            return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


def _lock_timeout(response: Any) -> bool:
    """A 429 ``lock_timeout``: the object was locked by another request (Stripe's
    "object lock timeouts"), which says nothing about the rate."""
    body = response[0] if isinstance(response, tuple) and response else b""
    if isinstance(body, str):
        body = body.encode()
    return isinstance(body, bytes) and b'"lock_timeout"' in body


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return None if value is None else str(value)


def _status_and_headers(response: Any) -> tuple[int | None, Mapping[str, str] | None]:
    # The SDK's transports answer (body, status code, headers).
    try:
        _, status, headers = response
    except (TypeError, ValueError):
        return None, None
    return (status if isinstance(status, int) else None), headers


def _metric(kind: str, *, wait: float) -> None:
    """The governor's metrics, in one place: tokens and their wait, 429s and back-offs."""
    if kind == "tokens":
        telemetry.counter(
            "payout_ledger.bulk.tokens", unit="{token}", description="Rate budget tokens taken"
        )
        telemetry.histogram(
            "payout_ledger.bulk.token_wait",
            wait,
            unit="s",
            description="Seconds waited for a rate budget token",
        )
    else:
        telemetry.counter(
            "payout_ledger.bulk.rate_limited",
            unit="{response}",
            description="Stripe responses 429 seen under the rate budget",
        )
        telemetry.histogram(
            "payout_ledger.bulk.backoff",
            wait,
            unit="s",
            description="Seconds the whole rate budget backed off after a 429",
        )


_governor: ContextVar[RateGovernor | None] = ContextVar("payout_ledger_governor", default=None)
_notes: ContextVar[RequestNotes | None] = ContextVar("payout_ledger_request_notes", default=None)


@contextmanager
def governed_by(governor: RateGovernor | None) -> Iterator[None]:
    """Every Stripe request made inside (in this context) waits for ``governor``'s
    tokens (None: ungoverned)."""
    token = _governor.set(governor)
    try:
        yield
    finally:
        _governor.reset(token)


@contextmanager
def noting_requests() -> Iterator[RequestNotes]:
    """What the governor sees of the requests made inside, for the caller to read."""
    notes = RequestNotes()
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


def current_governor() -> RateGovernor | None:
    """The governor of this context, if any."""
    return _governor.get()


def governed_request(send: Callable[[], _Response]) -> _Response:
    """``send()`` (one HTTP try) under the context's governor, or at once without one.

    A transport calls it around each try; ``send`` checks the send window itself,
    after the wait for a token.
    """
    governor = _governor.get()
    return send() if governor is None else governor.send(send)


async def governed_request_async(send: Callable[[], Awaitable[_Response]]) -> _Response:
    """[`governed_request`][payout_ledger.service.governor.governed_request], for
    async transports."""
    governor = _governor.get()
    return await send() if governor is None else await governor.send_async(send)
