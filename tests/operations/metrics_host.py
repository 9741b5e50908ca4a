"""A host process for the metrics harness: examples/prometheus_host.py's app, plus a
maintenance worker thread, on a store and a Stripe the test names.

``python -m tests.operations.metrics_host CONFIG_JSON`` serves on 127.0.0.1 and
prints ``ready <base url>`` on stdout; it stops when its stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.service.worker import MaintenanceWorker
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.stripe.webhooks import WebhookHandler
from payout_ledger.testing import InMemoryProviderDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import prometheus_host


def main(config: dict[str, object]) -> None:
    prometheus_host.configure_metrics()
    settings = LedgerSettings(
        store_url=str(config["store_url"]),
        stripe_api_key=str(config["api_key"]),
        health_in_flight_threshold=float(config["in_flight_threshold"]),  # type: ignore[arg-type]
    )
    providers = InMemoryProviderDirectory(
        [ServiceProvider(id="prov_1", user_id="user_1", stripe_account_id=str(config["account"]))]
    )
    gateway = StripeTransferGateway(
        str(config["api_key"]), api_base=str(config["api_base"]), max_network_retries=0, timeout=5
    )
    with PayoutLedger(settings=settings, providers=providers, gateway=gateway) as ledger:
        worker = MaintenanceWorker(
            ledger,
            interval=float(config["worker_interval"]),  # type: ignore[arg-type]
            resume_after=float(config["resume_after"]),  # type: ignore[arg-type]
            lease_seconds=5,
        )
        stop = threading.Event()
        working = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        working.start()
        app = prometheus_host.create_app(ledger, WebhookHandler.from_settings(ledger, settings))
        with prometheus_host.serving(app) as url:
            print("ready", url, flush=True)
            sys.stdin.read()  # until the test closes it
        stop.set()
        working.join(timeout=30)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
