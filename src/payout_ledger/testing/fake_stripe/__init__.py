"""A fake Stripe API server that the real ``stripe`` SDK talks to over HTTP.

Use it in tests of code that pays connected accounts through Stripe Connect::

    from payout_ledger.testing.fake_stripe import FakeStripe, faults

    with FakeStripe() as fake:
        client = fake.client()  # a real stripe.StripeClient
        fake.inject(faults.drop_after_commit(), path="/v1/transfers")
        ...

See `FakeStripe` for the endpoints, test controls and inspection, and
`.faults` for what can be injected.
"""

from . import faults
from ._clock import FakeClock
from ._fake import DEFAULT_BALANCE, FakeStripe
from ._http import Headers, RecordedRequest
from ._webhooks import WebhookDelivery, WebhookEndpoint, sign_payload
from .faults import Fault, FaultRule

__all__ = [
    "DEFAULT_BALANCE",
    "FakeClock",
    "FakeStripe",
    "Fault",
    "FaultRule",
    "Headers",
    "RecordedRequest",
    "WebhookDelivery",
    "WebhookEndpoint",
    "faults",
    "sign_payload",
]
