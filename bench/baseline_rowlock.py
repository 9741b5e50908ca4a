"""The original backend's row-lock design, rebuilt faithfully as the benchmark's baseline.

The original backend (the application this ledger replaces) made ``release_payment()``
safe against concurrent releases with its "Concurrency Fix: Payment Release Safety
(Phase 3)", on SQLAlchemy:

* the whole payout runs in one transaction (the original: ``async with db.begin_nested()``);
* the ``EventService`` row is read with ``with_for_update()``, a row lock that
  serialises concurrent releases of the same service;
* one ``Payment`` row per event service (``payments.event_service_id`` is UNIQUE,
  ``payment_type = "service_payment"``) is the idempotency record: ``released`` means
  "answer ``already_released`` without calling Stripe", ``payout_started`` means
  "reject the duplicate";
* ``payout_started`` is written (flushed) *before* the Stripe transfer, with the
  idempotency key ``release_payment:{event_service_id}``, and the row becomes
  ``released`` only after the transfer succeeded;
* the transaction - and therefore the row lock and a pooled connection - stays open
  across the Stripe call and is committed at the end.

This module does exactly that with the SQLAlchemy 2 ORM on psycopg 3, against the same
PostgreSQL server, with a connection pool the same size as the ledger's in every
scenario. Two deliberate simplifications, both in the baseline's favour:

* one plain transaction (``session.begin()``) instead of the original backend's
  ``begin_nested()`` SAVEPOINT inside the request's transaction: two round trips
  fewer per release;
* the provider (``stripe_account_id``, ``user_id``) comes from the same in-memory
  directory the ledger uses, instead of a second ``SELECT`` on ``service_providers``.

The gateway is the same ``InMemoryTransferGateway`` (with the same ``latency``) the
ledger calls, so a Stripe call costs both designs the same time; only what each holds
while it waits differs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from payout_ledger import ServiceProvider, TransferRequest
from payout_ledger.testing import InMemoryTransferGateway

__all__ = ["RowLockPayments", "open_baseline"]


class _Base(DeclarativeBase):
    pass


class EventService(_Base):
    """The host's event service row: the row the original backend locks."""

    __tablename__ = "event_services"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    service_provider_id: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32), default="delivered")


class Payment(_Base):
    """The original backend's payout record: one per event service (UNIQUE event_service_id)."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_service_id: Mapped[str] = mapped_column(String(200), unique=True)
    payment_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    payee_id: Mapped[str] = mapped_column(String(200))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    stripe_transfer_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass
class RowLockPayments:
    """``release_payment`` as the original backend wrote it: a row lock across the Stripe call."""

    url: str
    schema: str
    pool_size: int
    provider: ServiceProvider
    gateway: InMemoryTransferGateway

    def __post_init__(self) -> None:
        self.engine = create_engine(
            self.url,
            pool_size=self.pool_size,
            max_overflow=0,
            pool_timeout=120,
            connect_args={"options": f"-csearch_path={self.schema}"},
        )

    def create_tables(self) -> None:
        """Create ``event_services`` and ``payments`` in the benchmark's schema."""
        _Base.metadata.create_all(self.engine)

    def add_event_services(self, prefix: str, count: int, amount: int = 5000) -> None:
        """Insert the host's delivered event services ``{prefix}{0..count-1}``."""
        statement = text(
            "INSERT INTO event_services (id, service_provider_id, amount, currency, status) "
            "SELECT :prefix || g, :provider, :amount, 'usd', 'delivered' "
            "FROM generate_series(0, :last) AS g"
        )
        with self.engine.begin() as conn:
            conn.execute(
                statement,
                {
                    "prefix": prefix,
                    "provider": self.provider.id,
                    "amount": amount,
                    "last": count - 1,
                },
            )

    def release_payment(self, event_service_id: str) -> str:
        """Release one event service's payment; the outcome as the ledger names it."""
        key = f"release_payment:{event_service_id}"
        with Session(self.engine) as session, session.begin():
            service = session.execute(
                select(EventService).where(EventService.id == event_service_id).with_for_update()
            ).scalar_one()
            payment = session.execute(
                select(Payment).where(
                    Payment.event_service_id == event_service_id,
                    Payment.payment_type == "service_payment",
                )
            ).scalar_one_or_none()
            if payment is not None and payment.status == "released":
                return "already_released"
            if payment is not None and payment.status == "payout_started":
                return "in_progress"
            if self.provider.stripe_account_id is None:
                return "onboarding_required"
            if payment is None:
                payment = Payment(
                    event_service_id=event_service_id,
                    payment_type="service_payment",
                    status="payout_started",
                    amount=service.amount,
                    currency=service.currency,
                    payee_id=self.provider.user_id,
                    idempotency_key=key,
                )
                session.add(payment)
            else:  # a failed earlier attempt: the original reuses the row
                payment.status = "payout_started"
                payment.attempts += 1
            session.flush()  # payout_started is written before the transfer
            # The row lock, the transaction and the pooled connection stay held here.
            transfer = self.gateway.create_transfer(
                TransferRequest(
                    amount=service.amount,
                    currency=service.currency,
                    destination=self.provider.stripe_account_id,
                    idempotency_key=key,
                    transfer_group=f"event_service:{event_service_id}",
                    metadata={"event_service_id": event_service_id},
                )
            )
            payment.status = "released"
            payment.stripe_transfer_id = transfer.transfer_id
            payment.updated_at = dt.datetime.now(dt.UTC)
            service.status = "payment_released"
        return "released"

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def open_baseline(
    *,
    sqlalchemy_url: str,
    schema: str,
    pool_size: int,
    provider: ServiceProvider,
    gateway: InMemoryTransferGateway,
) -> RowLockPayments:
    """A baseline on ``schema`` (which must exist) with its tables created."""
    baseline = RowLockPayments(sqlalchemy_url, schema, pool_size, provider, gateway)
    baseline.create_tables()
    return baseline
