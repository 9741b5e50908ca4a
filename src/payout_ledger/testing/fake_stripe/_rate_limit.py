"""Stripe's rate limiter, as its documentation describes it.

Stripe's docs ("Rate limits"): limits are requests per second per account; a
global limit (live mode 100, sandboxes 25) counts every request, and each
endpoint - each named API operation, so ``POST /v1/transfers`` and
``GET /v1/transfers/{id}`` are two - has 25 per second unless stated otherwise;
requests to one endpoint about different objects count together. A request
beyond a limit is answered ``429`` with ``"code": "rate_limit"`` and nothing
runs. Stripe's engineering blog ("Scaling your API with rate limiters")
describes the limiter as a token bucket, which is what this is: one bucket per
endpoint (and one global), holding one second of requests, refilled
continuously; only admitted requests take a token.

Stripe does not document a ``Retry-After`` on its 429s, nor a
``Stripe-Should-Retry`` on a ``rate_limit`` one (it sends ``true`` on the 429
``lock_timeout`` of an object locked by another request). So the fake sends
neither unless a test asks for them (``retry_after=``, or the ``rate_limited``
fault's options). The ``Stripe-Rate-Limited-Reason`` header names the limiter
that refused (``endpoint-rate`` or ``global-rate``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter", "endpoint_of"]

# Path segments holding an object's id (tr_123, acct_1Abc, trr_9): one endpoint
# whatever the object.
_ID_SEGMENT = re.compile(r"^[a-z]+_[A-Za-z0-9_]+$")


def endpoint_of(method: str, path: str) -> str:
    """The named operation a request counts against: ``GET /v1/transfers/{id}``."""
    segments = ["{id}" if _ID_SEGMENT.match(s) else s for s in path.split("/")]
    return f"{method.upper()} {'/'.join(segments)}"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets of ``per_endpoint`` requests per second for each endpoint and
    ``total`` for all (None: that limit is off), each holding one second of requests.

    ``clock`` is a monotonic clock in seconds (``time.monotonic``).
    """

    def __init__(
        self,
        *,
        per_endpoint: float | None,
        total: float | None = None,
        retry_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("rate_limit", per_endpoint), ("global_rate_limit", total)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, or None for no limit")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        self.per_endpoint = per_endpoint
        self.total = total
        self.retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, method: str, path: str) -> str | None:
        """Take a token for this request: None when admitted, else the reason it is
        refused (``endpoint-rate`` or ``global-rate``); a refusal takes no token."""
        now = self._clock()
        endpoint = endpoint_of(method, path)
        with self._lock:
            checks = []
            if self.total is not None:
                checks.append(("global-rate", self._refilled("*", self.total, now)))
            if self.per_endpoint is not None:
                checks.append(("endpoint-rate", self._refilled(endpoint, self.per_endpoint, now)))
            for reason, bucket in checks:
                if bucket.tokens < 1.0:
                    return reason
            for _, bucket in checks:
                bucket.tokens -= 1.0
        return None

    def _refilled(self, key: str, rate: float, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=rate, updated=now)
        bucket.tokens = min(rate, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        return bucket

    def headers(self, reason: str) -> tuple[tuple[str, str], ...]:
        """The headers of a 429 this limiter answers."""
        extra = [("Stripe-Rate-Limited-Reason", reason)]
        if self.retry_after is not None:
            extra.append(("Retry-After", f"{self.retry_after:g}"))
        return tuple(extra)
