"""Stripe adapters: the transfer gateway (and, later, webhooks)."""

from payout_ledger.stripe.gateway import StripeTransfer, StripeTransferGateway, classify_error

__all__ = ["StripeTransfer", "StripeTransferGateway", "classify_error"]
