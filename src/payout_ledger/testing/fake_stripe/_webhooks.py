"""Signed webhook delivery from a background sender thread."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["WebhookDelivery", "WebhookDispatcher", "WebhookEndpoint", "sign_payload"]

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def sign_payload(payload: bytes, secret: str, timestamp: int) -> str:
    """Return a ``Stripe-Signature`` header value for ``payload``.

    It is ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<payload>">``,
    what ``stripe.Webhook.construct_event`` verifies.
    """
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class WebhookEndpoint:
    """A registered receiver: events whose type matches go to ``url``."""

    id: str
    url: str
    secret: str
    enabled_events: tuple[str, ...]

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint subscribes to ``event_type``."""
        return "*" in self.enabled_events or event_type in self.enabled_events


@dataclass(frozen=True)
class WebhookDelivery:
    """One delivery attempt: ``status_code`` is ``None`` if no HTTP answer came."""

    event_id: str
    event_type: str
    endpoint_id: str
    url: str
    attempt: int
    status_code: int | None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class _Job:
    endpoint: WebhookEndpoint
    event_id: str
    event_type: str
    payload: bytes


class WebhookDispatcher:
    """Queues events per endpoint and POSTs them, in order, with retries."""

    def __init__(self, *, max_attempts: int, retry_delay: float, timeout: float = 5.0) -> None:
        """Try each delivery up to ``max_attempts`` times, ``retry_delay`` apart
        (growing linearly), waiting at most ``timeout`` for each answer."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._timeout = timeout
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._endpoints: list[WebhookEndpoint] = []
        self._deliveries: list[WebhookDelivery] = []
        self._pending = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Never route loopback deliveries through an environment proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def add_endpoint(
        self, url: str, secret: str | None, enabled_events: Sequence[str]
    ) -> WebhookEndpoint:
        """Register a receiver on this machine and return it.

        Only ``http``/``https`` URLs on a loopback host are accepted: the fake
        is for tests and sends nothing off the machine.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname not in _LOOPBACK_HOSTS:
            raise ValueError(f"webhook URL must be http(s) on a loopback host: {url!r}")
        if isinstance(enabled_events, str):
            raise TypeError("enabled_events must be a sequence of event types")
        endpoint = WebhookEndpoint(
            id=f"we_{secrets.token_hex(12)}",
            url=url,
            secret=secret if secret is not None else f"whsec_{secrets.token_hex(16)}",
            enabled_events=tuple(enabled_events),
        )
        with self._lock:
            self._endpoints.append(endpoint)
        return endpoint

    def subscribers(self, event_type: str) -> int:
        """How many endpoints would receive an event of this type."""
        with self._lock:
            return sum(1 for endpoint in self._endpoints if endpoint.wants(event_type))

    def enqueue(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (a Stripe Event dict) for every subscribed endpoint."""
        payload = json.dumps(event, indent=2).encode()
        with self._lock:
            targets = [e for e in self._endpoints if e.wants(event["type"])]
            self._pending += len(targets)
        for endpoint in targets:
            self._queue.put(_Job(endpoint, event["id"], event["type"], payload))

    @property
    def deliveries(self) -> list[WebhookDelivery]:
        """Every delivery attempt so far, in the order they were made."""
        with self._lock:
            return list(self._deliveries)

    def start(self) -> None:
        """Start the sender thread (idempotent)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fake-stripe-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sender thread; undelivered events are dropped."""
        if self._thread is None:
            return
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=self._timeout + 1)
        self._thread = None

    def flush(self, timeout: float) -> None:
        """Wait until every queued delivery finished; ``TimeoutError`` if not."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    raise TimeoutError(f"{self._pending} webhook deliveries still pending")
                self._idle.wait(remaining)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                if not self._stopping.is_set():
                    self._deliver(job)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _deliver(self, job: _Job) -> None:
        for attempt in range(1, self._max_attempts + 1):
            delivery = self._attempt(job, attempt)
            with self._lock:
                self._deliveries.append(delivery)
            if delivery.succeeded or attempt == self._max_attempts:
                return
            if self._stopping.wait(self._retry_delay * attempt):
                return

    def _attempt(self, job: _Job, attempt: int) -> WebhookDelivery:
        # Signed with the real time: receivers check it against their own
        # clock (the signature tolerance), not against the fake's clock.
        header = sign_payload(job.payload, job.endpoint.secret, int(time.time()))
        request = urllib.request.Request(  # noqa: S310 - loopback http(s) only
            job.endpoint.url,
            data=job.payload,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Stripe-Signature": header,
            },
        )
        status: int | None = None
        error: str | None = None
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        return WebhookDelivery(
            event_id=job.event_id,
            event_type=job.event_type,
            endpoint_id=job.endpoint.id,
            url=job.endpoint.url,
            attempt=attempt,
            status_code=status,
            error=error,
        )
