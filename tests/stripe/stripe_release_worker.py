"""Code that runs in OS processes of the Stripe tests, on the real gateway over HTTP.

* `release_services` runs in a spawned pool (the process race);
* run as a module from the repository root it releases one service and exits,
  so a test can SIGKILL it while the fake holds its transfer request:
  ``python -m tests.stripe.stripe_release_worker STORE_URL API_BASE API_KEY ACCOUNT SERVICE``.
"""

from __future__ import annotations

import sys
from typing import Any

from tests.stripe.stripe_support import build_ledger, real_gateway_for, release_request


def release_services(
    store_url: str,
    api_base: str,
    api_key: str,
    account_id: str,
    services: list[str],
    barrier: Any,
) -> list[str]:
    """Release every service once, all processes starting together."""
    try:
        ledger = build_ledger(store_url, account_id, real_gateway_for(api_base, api_key))
    except BaseException:
        barrier.abort()  # let the others fail fast; this process reports why
        raise
    try:
        barrier.wait(timeout=60)
        return [ledger.release_payment(release_request(s)).outcome.value for s in services]
    finally:
        ledger.close()


def main(argv: list[str]) -> int:
    store_url, api_base, api_key, account_id, event_service_id = argv
    ledger = build_ledger(store_url, account_id, real_gateway_for(api_base, api_key))
    try:
        result = ledger.release_payment(release_request(event_service_id))
    finally:
        ledger.close()
    print(result.outcome.value, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
