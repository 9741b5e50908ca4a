"""Adapters to the database: the store's wiring, recorders, mapper and log reader,
and the read model's views.

The Stripe adapters (gateway, webhook verification) live in ``payout_ledger.stripe``,
a public name. Nothing here imports the service layer (an import contract checks it).
"""
