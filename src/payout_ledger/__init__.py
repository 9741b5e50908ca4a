"""payout_ledger: release marketplace payments through Stripe Connect, exactly once."""

from importlib import metadata as _metadata

from payout_ledger.domain.money import Money
from payout_ledger.domain.payout import PayoutAggregate, PayoutStatus, idempotency_key
from payout_ledger.errors import (
    ConfigurationError,
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
    SendWindowClosed,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    TransferDeclined,
    TransferNotExecuted,
    TransferOutcomeUnknown,
)
from payout_ledger.service.ledger import PayoutLedger
from payout_ledger.service.ports import (
    Clock,
    ProviderDirectory,
    ServiceProvider,
    TransferGateway,
    TransferRequest,
    TransferResult,
    check_send_window,
)
from payout_ledger.service.requests import ReleaseOutcome, ReleaseRequest, ReleaseResult
from payout_ledger.settings import LedgerSettings

try:
    __version__ = _metadata.version("payout-ledger")
    """The installed distribution's version (``payout-ledger --version``)."""
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Clock",
    "ConfigurationError",
    "GatewayError",
    "InvalidMoneyError",
    "InvalidRequestError",
    "LedgerBusyError",
    "LedgerIntegrityError",
    "LedgerSettings",
    "LivemodeMismatchError",
    "Money",
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
    "SendWindowClosed",
    "ServiceProvider",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "TransferDeclined",
    "TransferGateway",
    "TransferNotExecuted",
    "TransferOutcomeUnknown",
    "TransferRequest",
    "TransferResult",
    "check_send_window",
    "idempotency_key",
]
