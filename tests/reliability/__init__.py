"""Reliability evidence: exactly-once under random histories, explored interleavings and faults.

``PAYOUT_LEDGER_RELIABILITY=long`` runs the heavy version; every test writes its
counts to a figures file that ``tests/reliability/report.py`` renders into
``docs/reliability.md``.
"""
