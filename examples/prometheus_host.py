"""A host whose Prometheus scrapes the ledger's metrics (OpenTelemetry SDK + Prometheus exporter).

The library speaks only the OpenTelemetry API (``pip install 'payout-ledger[otel]'``);
the host picks the SDK and the exporter:

```bash
pip install opentelemetry-sdk opentelemetry-exporter-prometheus prometheus-client
```

`configure_metrics` sets a ``MeterProvider`` whose ``PrometheusMetricReader``
feeds prometheus_client's registry, and `create_app` serves it at ``/metrics``
next to the ledger's webhook endpoint, its health check and a release route.
Prometheus then scrapes the app (``prometheus.yml``):

```yaml
scrape_configs:
  - job_name: marketplace
    static_configs:
      - targets: ["marketplace.internal:8000"]
```

Run it: ``.venv/bin/python examples/prometheus_host.py``. Against the fake
Stripe server it serves the app on 127.0.0.1, releases one payment, has Stripe
refuse the next request with a 429, scrapes ``/metrics`` over HTTP and prints
the ledger's series (``payout_ledger_*``).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from payout_ledger import (
    InvalidRequestError,
    LedgerSettings,
    PayoutLedger,
    ProviderNotFoundError,
    ServiceProvider,
)
from payout_ledger.asgi import health_app, webhook_app
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.stripe.webhooks import WebhookHandler
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults


def configure_metrics() -> None:
    """Once per process, at start-up: the SDK's meter provider, read by Prometheus.

    The ledger's instruments record into it whether the ledger was imported
    before or after this call.
    """
    reader = PrometheusMetricReader()  # registers with prometheus_client's default registry
    resource = Resource.create({"service.name": "marketplace"})
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


def create_app(ledger: PayoutLedger, handler: WebhookHandler) -> Starlette:
    """The host's app: ``/metrics``, ``/health/``, ``/stripe/webhooks/`` and ``POST /releases``."""

    async def release(request: Request) -> JSONResponse:
        try:
            result = await ledger.release_payment_async(await request.json())
        except (InvalidRequestError, ProviderNotFoundError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"outcome": result.outcome.value, "error_code": result.error_code})

    def scrape(request: Request) -> Response:
        # A plain def: Starlette runs it in its thread pool, as the collection blocks.
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/metrics", scrape, methods=["GET"]),
            Route("/releases", release, methods=["POST"]),
            Mount("/stripe/webhooks", webhook_app(handler)),
            Mount("/health", health_app(ledger, check_stripe=False)),
        ]
    )


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main() -> None:
    configure_metrics()
    with FakeStripe() as stripe_server, tempfile.TemporaryDirectory() as tmp:
        account = stripe_server.client().v1.accounts.create({"type": "express"}).id
        providers = InMemoryProviderDirectory(
            [ServiceProvider(id="prov_7", user_id="user_7", stripe_account_id=account)]
        )
        gateway = StripeTransferGateway(
            stripe_server.api_key, api_base=stripe_server.url, max_network_retries=0
        )
        settings = LedgerSettings(store_url=f"sqlite:///{Path(tmp) / 'payouts.db'}")
        with PayoutLedger(settings=settings, providers=providers, gateway=gateway) as ledger:
            app = create_app(ledger, WebhookHandler.from_settings(ledger, settings))
            with serving(app) as url, httpx.Client(base_url=url) as http:
                amount = {"amount": 5000, "currency": "usd"}
                paid = {"event_service_id": "es_1", "provider_id": "prov_7", "amount": amount}
                print("release:", http.post("/releases", json=paid).json()["outcome"])
                stripe_server.inject(faults.rate_limited())  # Stripe refuses the next transfer
                limited = {**paid, "event_service_id": "es_2"}
                print("rate limited:", http.post("/releases", json=limited).json()["outcome"])
                print("health:", http.get("/health/").status_code)
                scraped = http.get("/metrics")
                scraped.raise_for_status()
    for line in scraped.text.splitlines():  # the ledger's series, with their HELP and TYPE
        if line.removeprefix("# HELP ").removeprefix("# TYPE ").startswith("payout_ledger_"):
            print(line)


if __name__ == "__main__":
    main()
