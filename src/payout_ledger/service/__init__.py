"""The service layer: the ledger's use cases, one module each, and its ports.

``PayoutLedger`` (ledger.py) combines them: core.py (settings, store, clock,
queries), release.py, resume.py, stripe_event_effects.py and sealing.py, with
attempts.py shared by release and resume; reconcile.py compares the books with
Stripe. Ports (ports.py) say what the service needs from the host and Stripe;
requests.py parses what hosts send. docs/architecture.md draws the layers.
"""
