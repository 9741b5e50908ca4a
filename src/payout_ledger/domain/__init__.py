"""The domain: what the ledger records, and the rules of its own consistency.

Money, the payout aggregate and its idempotency keys, the hash chain every
stored event carries, the seal over the log, and the Stripe events and store
mode the ledger keeps. No I/O: nothing here imports a store, Stripe or the
service layer (an import contract checks it).
"""
