"""PayoutLedger: the one application a host builds, combining the ledger's use cases.

Each use case has its module: [release][payout_ledger.service.release],
[resume][payout_ledger.service.resume],
[reversal][payout_ledger.service.reversal],
[payability][payout_ledger.service.payability],
[Stripe event effects][payout_ledger.service.stripe_event_effects] and
[sealing][payout_ledger.service.sealing]; they share the
[core][payout_ledger.service.core] (settings, store, clock, queries) and the
[attempt][payout_ledger.service.attempts] (send one transfer, record its
outcome). docs/architecture.md draws the layers.
"""

from __future__ import annotations

from payout_ledger.service.bulk import BulkReleasing
from payout_ledger.service.health import HealthReport, LedgerStatus, ledger_health, ledger_status
from payout_ledger.service.payability import Payability
from payout_ledger.service.release import Releasing
from payout_ledger.service.resume import Resuming
from payout_ledger.service.reversal import Reversing
from payout_ledger.service.sealing import SealInfo, seal_ledger
from payout_ledger.service.stripe_event_effects import StripeEventEffects

__all__ = ["PayoutLedger"]


class PayoutLedger(BulkReleasing, Releasing, Resuming, Reversing, StripeEventEffects, Payability):
    """Releases event services' payments to their providers, exactly once.

    ```python
    ledger = PayoutLedger(
        settings=LedgerSettings(store_url="sqlite:///payouts.db"),
        providers=my_provider_directory,
        gateway=StripeTransferGateway(...),
    )
    result = ledger.release_payment(
        {"event_service_id": "es_1", "provider_id": "prov_1",
         "amount": {"amount": 5000, "currency": "usd"}}
    )
    ```
    """

    def seal(self) -> SealInfo:
        """Seal the log: record its event count and rolling digest up to now.

        A seal is chained to the previous one, so removing the newest events or
        editing them is noticed by [`verify_ledger`][payout_ledger.audit.verify_ledger].
        Export each seal's ``seal_digest`` outside the database (see docs/audit.md).
        """
        return seal_ledger(self)

    def status(self) -> LedgerStatus:
        """The books now: attempts in flight and the oldest one's age, the read
        model's lag, the events waiting for a seal and the newest seal's age.

        Reads the log's claims and outcomes once, and each payout in flight. Sets
        the ledger's gauges (see docs/operations.md), so every status taken, by a
        health check or a maintenance worker's cycle, is what the metrics show.
        """
        return ledger_status(self)

    def health(self, *, check_stripe: bool = True) -> HealthReport:
        """Whether the ledger can work and keeps up: each check named, with its state.

        The store answers; its events can be read with these settings (the
        cipher); Stripe answers a read-only request (unless ``check_stripe=False``
        or Stripe is disabled); the oldest attempt in flight, the read model's lag
        and the seal's age are within ``health_*`` settings. The report holds no
        id and no secret. See [`health_app`][payout_ledger.asgi.health_app] to
        serve it.
        """
        return ledger_health(self, check_stripe=check_stripe)
