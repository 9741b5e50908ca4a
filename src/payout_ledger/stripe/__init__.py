"""Stripe adapters: the transfer gateway and webhook verification/dispatch."""

from payout_ledger.stripe.gateway import StripeTransferGateway, classify_error
from payout_ledger.stripe.webhooks import StripeEventSink, WebhookHandler, WebhookResponse

__all__ = [
    "StripeEventSink",
    "StripeTransferGateway",
    "WebhookHandler",
    "WebhookResponse",
    "classify_error",
]
