"""An ASGI endpoint for Stripe webhooks, to mount in a host's web application.

```python
from fastapi import FastAPI
from payout_ledger.asgi import webhook_app
from payout_ledger.stripe.webhooks import WebhookHandler

app = FastAPI()
app.mount("/stripe/webhooks", webhook_app(WebhookHandler.from_settings(ledger, settings)))
# register https://<host>/stripe/webhooks/ at Stripe: with the trailing slash
```

A mount answers ``/stripe/webhooks/``; ``/stripe/webhooks`` gets a 307
redirect from the host's router, which Stripe counts as a failed delivery. To
serve a path without the slash, add the endpoint as a route instead:
``app.add_route("/stripe/webhooks", webhook_endpoint(handler), methods=["POST"])``.
Needs the ``asgi`` extra (Starlette).

The ledger's health check, for a load balancer or an orchestrator's probe:

```python
app.mount("/health", health_app(ledger))  # GET /health/: 200 healthy, 503 not
```
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from payout_ledger.service.health import HealthReport
from payout_ledger.service.ledger import PayoutLedger
from payout_ledger.stripe.webhooks import WebhookHandler, WebhookResponse

__all__ = ["health_app", "health_endpoint", "webhook_app", "webhook_endpoint"]

Endpoint = Callable[[Request], Awaitable[Response]]


def webhook_app(handler: WebhookHandler) -> Starlette:
    """A Starlette application serving ``handler`` at ``POST /``, for mounting.

    See [`webhook_endpoint`][payout_ledger.asgi.webhook_endpoint] for how the
    request is read.
    """
    return Starlette(routes=[Route("/", webhook_endpoint(handler), methods=["POST"])])


def webhook_endpoint(handler: WebhookHandler) -> Endpoint:
    """A Starlette endpoint (``request -> response``) serving ``handler``.

    The body is read raw, never re-serialised, and at most
    ``handler.max_body_bytes`` of it: a larger one, announced by
    ``Content-Length`` or not, is answered 413 without reading the rest.
    ``handler.handle`` runs in Starlette's thread pool, off the event loop,
    because the ledger's store calls block.
    """

    async def receive_stripe_webhook(request: Request) -> Response:
        headers = request.headers
        declared = _content_length(headers.get("content-length"))
        if declared is not None:
            early = handler.precheck(declared)
            if early is not None:
                return _json(early)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > handler.max_body_bytes:
                    early = handler.precheck(size)
                    return _json(early or WebhookResponse(413, {"error": "payload_too_large"}))
                chunks.append(chunk)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read the answer
        result = await run_in_threadpool(handler.handle, b"".join(chunks), headers)
        return _json(result)

    return receive_stripe_webhook


def health_app(
    ledger: PayoutLedger, *, check_stripe: bool = True, max_age: float = 2.0
) -> Starlette:
    """A Starlette application serving the ledger's health at ``GET /``, for mounting.

    See [`health_endpoint`][payout_ledger.asgi.health_endpoint].
    """
    endpoint = health_endpoint(ledger, check_stripe=check_stripe, max_age=max_age)
    return Starlette(routes=[Route("/", endpoint, methods=["GET"])])


def health_endpoint(
    ledger: PayoutLedger, *, check_stripe: bool = True, max_age: float = 2.0
) -> Endpoint:
    """A Starlette endpoint answering [`PayoutLedger.health`][payout_ledger.PayoutLedger.health].

    200 when every check holds, 503 otherwise, with the report as JSON:
    ``{"ok", "checks": {name: {"state", "detail", "value", "threshold"}}, "status"}``
    (counts, ages and states: no id, no secret, no error message, only an error's
    class). The checks run in Starlette's thread pool, off the event loop, one
    at a time: a report at most ``max_age`` seconds old is answered again, so
    probes from many load balancers cost one check (each reads the log's claims
    and asks Stripe once). An unexpected error answers 503 ``{"ok": false}``.
    """
    lock = threading.Lock()
    last: list[tuple[float, HealthReport]] = []

    def checked() -> HealthReport:
        with lock:
            if last and time.monotonic() - last[0][0] < max_age:
                return last[0][1]
            report = ledger.health(check_stripe=check_stripe)
            last[:] = [(time.monotonic(), report)]
            return report

    async def ledger_health(request: Request) -> Response:
        try:
            report = await run_in_threadpool(checked)
        except Exception:
            return JSONResponse({"ok": False}, status_code=503)
        return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)

    return ledger_health


def _json(result: WebhookResponse) -> JSONResponse:
    return JSONResponse(result.body, status_code=result.status)


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    if len(value) > 18:  # int() refuses very long digit strings; this is too large anyway
        return sys.maxsize
    return int(value)
