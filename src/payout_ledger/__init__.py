"""payout_ledger: release marketplace payments through Stripe Connect, exactly once."""

import logging as _logging
from importlib import metadata as _metadata

from payout_ledger.domain.account import AccountPayability, PayabilitySource
from payout_ledger.domain.money import Money
from payout_ledger.domain.payout import PayoutAggregate, PayoutStatus, idempotency_key
from payout_ledger.errors import (
    BulkRequestError,
    ConfigurationError,
    DestinationUnpayable,
    GatewayError,
    InvalidMoneyError,
    InvalidRequestError,
    LedgerBusyError,
    LedgerIntegrityError,
    LivemodeMismatchError,
    PayoutLedgerError,
    PayoutNotFoundError,
    ProviderNotFoundError,
    ReleaseConflictError,
    ReversalConflictError,
    ReversalRefusedError,
    SendWindowClosed,
    SourceTransactionError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    TransferDeclined,
    TransferNotExecuted,
    TransferOutcomeUnknown,
)
from payout_ledger.service.bulk import BulkItemResult, BulkReleaseReport
from payout_ledger.service.health import HealthCheck, HealthReport, LedgerStatus
from payout_ledger.service.ledger import PayoutLedger
from payout_ledger.service.ports import (
    AccountLookup,
    Clock,
    ProviderDirectory,
    ServiceProvider,
    StripeAccount,
    TransferGateway,
    TransferRequest,
    TransferResult,
    check_send_window,
)
from payout_ledger.service.requests import (
    ReleaseOutcome,
    ReleaseRequest,
    ReleaseResult,
    ReversalOutcome,
    ReversalResult,
)
from payout_ledger.service.worker import MaintenanceWorker
from payout_ledger.service.worker_cycle import WorkerCycle
from payout_ledger.settings import STRIPE_API_VERSION, LedgerSettings

# A library configures no logging: its loggers (all under "payout_ledger") get a
# NullHandler and nothing else; the host decides where records go.
_logging.getLogger("payout_ledger").addHandler(_logging.NullHandler())

try:
    __version__ = _metadata.version("payout-ledger")
    """The installed distribution's version (``payout-ledger --version``)."""
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "STRIPE_API_VERSION",
    "AccountLookup",
    "AccountPayability",
    "BulkItemResult",
    "BulkReleaseReport",
    "BulkRequestError",
    "Clock",
    "ConfigurationError",
    "DestinationUnpayable",
    "GatewayError",
    "HealthCheck",
    "HealthReport",
    "InvalidMoneyError",
    "InvalidRequestError",
    "LedgerBusyError",
    "LedgerIntegrityError",
    "LedgerSettings",
    "LedgerStatus",
    "LivemodeMismatchError",
    "MaintenanceWorker",
    "Money",
    "PayabilitySource",
    "PayoutAggregate",
    "PayoutLedger",
    "PayoutLedgerError",
    "PayoutNotFoundError",
    "PayoutStatus",
    "ProviderDirectory",
    "ProviderNotFoundError",
    "ReleaseConflictError",
    "ReleaseOutcome",
    "ReleaseRequest",
    "ReleaseResult",
    "ReversalConflictError",
    "ReversalOutcome",
    "ReversalRefusedError",
    "ReversalResult",
    "SendWindowClosed",
    "ServiceProvider",
    "SourceTransactionError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "StripeAccount",
    "TransferDeclined",
    "TransferGateway",
    "TransferNotExecuted",
    "TransferOutcomeUnknown",
    "TransferRequest",
    "TransferResult",
    "WorkerCycle",
    "check_send_window",
    "idempotency_key",
]
