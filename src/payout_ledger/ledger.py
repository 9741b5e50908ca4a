"""PayoutLedger: the service layer that releases payments exactly once.

Each release loads the event service's payout, decides, and saves. The save of
``PayoutStarted`` is the claim: the store accepts one event per (payout,
version), so of two callers that decided on the same version only one saves,
and only the one that saved calls Stripe. The loser reloads, sees the payout in
flight (or released) and answers so. No database lock or transaction is held
while Stripe is being called.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlsplit
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    ApplicationRecorder,
    Cipher,
    IntegrityError,
    InternalError,
    Mapper,
    MapperDeserialisationError,
    PersistenceError,
    Transcoder,
)
from eventsourcing.postgres import (
    BasePostgresFactory,
    PostgresApplicationRecorder,
    PostgresFactory,
)
from eventsourcing.utils import Environment, get_topic

from payout_ledger.audit.stream import iter_notifications
from payout_ledger.chain import ChainedMapper, LedgerSeal, broken_link, ledger_transcoder
from payout_ledger.errors import (
    ConfigurationError,
    GatewayError,
    InvalidRequestError,
    LedgerBusyError,
    LedgerIntegrityError,
    LivemodeMismatchError,
    PayoutLedgerError,
    PayoutNotFoundError,
    ProviderNotFoundError,
    ReleaseConflictError,
    StoreNotFoundError,
    StoreUnavailableError,
    TransferDeclined,
    TransferNotExecuted,
)
from payout_ledger.payout import PayoutAggregate, PayoutStatus
from payout_ledger.ports import (
    Clock,
    ProviderDirectory,
    SendWindow,
    ServiceProvider,
    StripeTransfer,
    SystemClock,
    TransferGateway,
    TransferRequest,
    TransferResult,
    monotonic_of,
    sending_within,
    string_metadata,
)
from payout_ledger.recorders import OneRoundTripRecorder
from payout_ledger.release import (
    ReleaseOutcome,
    ReleaseRequest,
    ReleaseResult,
    checked_identifier,
    checked_stripe_id,
)
from payout_ledger.settings import LedgerSettings, livemode_of_key, redact_url, store_environment
from payout_ledger.store_mode import StoreMode, StoreModeRecord
from payout_ledger.stripe_events import (
    CapturedPayment,
    StripeEventOutcome,
    StripeEventReceipt,
    StripeEventRecord,
)

if TYPE_CHECKING:
    from payout_ledger.audit.seal import SealInfo

__all__ = ["PayoutLedger"]

logger = logging.getLogger("payout_ledger")

_PAGE = 500
SIMULATED_PREFIX = "sim_"
"""Transfer ids of simulated transfers (Stripe disabled) start with it."""
_TRANSFER_EVENTS = frozenset({"transfer.created", "transfer.updated", "transfer.reversed"})

_DDL_ATTEMPTS = 6


class PayoutLedger(Application):  # type: ignore[type-arg]
    """Releases event services' payments to their providers, exactly once.

    ```python
    ledger = PayoutLedger(
        settings=LedgerSettings(store_url="sqlite:///payouts.db"),
        providers=my_provider_directory,
        gateway=StripeTransferGateway(...),
    )
    result = ledger.release_payment(
        {"event_service_id": "es_1", "provider_id": "prov_1",
         "amount": {"amount": 5000, "currency": "usd"}}
    )
    ```
    """

    name = "PayoutLedger"  # pinned: it names the PostgreSQL table payoutledger_events

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # eventsourcing names each subclass after itself, which would give a host's
        # subclass another table and hide every payout already recorded.
        pinned = "name" in cls.__dict__
        super().__init_subclass__(**kwargs)
        if not pinned:
            cls.name = PayoutLedger.name

    def __init__(
        self,
        *,
        settings: LedgerSettings,
        providers: ProviderDirectory,
        gateway: TransferGateway | None = None,
        clock: Clock | None = None,
        must_exist: bool = False,
    ) -> None:
        """Open the store named by ``settings.store_url`` (creating its tables unless
        ``must_exist``) and check that its events can be read with these settings.

        ``must_exist=True`` opens only a store that is already there, as every
        operator command does: an SQLite file holding the events table, or the
        events table in the PostgreSQL schema. Nothing is created (no file, no
        table); [`StoreNotFoundError`][payout_ledger.errors.StoreNotFoundError]
        otherwise (``ConfigurationError`` for ``memory://``). A store that
        cannot be reached, authenticated to, opened or set up raises
        [`StoreUnavailableError`][payout_ledger.errors.StoreUnavailableError]
        with the driver's reason in one line, never a password.
        """
        settings.check()
        if settings.stripe_enabled and gateway is None:
            raise ConfigurationError("a transfer gateway is required when Stripe is enabled")
        self.settings = settings
        self._providers = providers
        self._gateway = gateway
        self._clock: Clock = clock or SystemClock()
        self._monotonic = monotonic_of(self._clock)
        if settings.environment == "production" and self.livemode is not True:
            raise ConfigurationError(
                "in production the ledger moves live money: its Stripe key "
                "(settings.stripe_api_key, sk_live_/rk_live_) or its gateway (livemode=True) "
                "must be live; a test key or a test double would record payouts nobody receives"
            )
        self.store_mode = (
            StoreMode.SIMULATED
            if not settings.stripe_enabled
            else StoreMode.LIVE
            if self.livemode
            else StoreMode.TEST
        )
        """What this ledger's money events are: ``live``, ``test`` or ``simulated``."""
        self._must_exist = must_exist
        env = {
            **_store_environment(settings, self.name, must_exist),
            **_cipher_environment(settings),
        }
        try:
            super().__init__(env=env)
            self._check_cipher()
        except BaseException as exc:
            self._close_partly_opened()
            if isinstance(exc, _STORE_FAILURES) and not isinstance(exc, PayoutLedgerError):
                raise _unavailable(settings, exc) from exc
            raise
        _forget_secrets(self.env)
        # A store that has its mode already needs no check on the write path; a
        # mismatch is refused on the first money event (reading stays possible).
        try:
            self._store_mode_settled = self._recorded_store_mode() is self.store_mode
        except ConfigurationError:
            self._store_mode_settled = False  # said again, and refused, on the first write

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Only what the host passed in: os.environ must not pick the store.
        return Environment(name, dict(env or {}))

    def construct_recorder(self) -> ApplicationRecorder:
        # eventsourcing creates tables when the recorder is built. Several processes
        # starting at once (web workers) race on PostgreSQL's catalog ("tuple
        # concurrently updated"); every statement is IF NOT EXISTS / OR REPLACE,
        # so creating again after a short pause is safe.
        if not isinstance(self.factory, BasePostgresFactory):
            return super().construct_recorder()
        self.factory.env[BasePostgresFactory.CREATE_TABLE] = "no"
        self.factory.env.setdefault(
            PostgresFactory.APPLICATION_RECORDER_TOPIC, get_topic(OneRoundTripRecorder)
        )
        recorder = super().construct_recorder()
        if not self.settings.create_tables or self._must_exist:
            return recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        for attempt in range(1, _DDL_ATTEMPTS + 1):
            try:
                recorder.create_table()
            except (InternalError, IntegrityError):
                if attempt == _DDL_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.05, 0.2) * attempt)
            else:
                break
        return recorder

    def construct_transcoder(self) -> Transcoder:
        # The one transcoder chain.stored_state() also uses: aggregates predict
        # the stored bytes of their fresh events to chain them (see chain.py).
        return ledger_transcoder()

    def construct_mapper(self) -> Mapper[UUID]:
        mapper: Mapper[UUID] = self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=ChainedMapper
        )
        if mapper.cipher is not None:
            mapper.cipher = _ExplainedCipher(mapper.cipher)
        return mapper

    def _close_partly_opened(self) -> None:
        # A constructor that fails must not leave a pool (and its threads) behind.
        factory = self.__dict__.get("factory")
        if factory is not None:
            with contextlib.suppress(Exception):
                factory.close()

    def _check_cipher(self) -> None:
        # A process with the wrong key (or none, on an encrypted store) must not
        # start writing events that no other process can read. One damaged event
        # must not stop the ledger either: a few are tried, one must decode.
        sample = self.recorder.select_notifications(1, _CIPHER_SAMPLE)
        errors = []
        for notification in sample:
            try:
                self.mapper.to_domain_event(notification)
            except MapperDeserialisationError as exc:  # decryption or JSON: reported below
                errors.append(exc)
            except Exception:
                return
            else:
                return
        if errors:
            cause = _first_cause(errors[0])
            raise ConfigurationError(
                f"the stored events cannot be read with these settings: {cause}"
            ) from errors[0]

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """Save aggregates' new events in one transaction (eventsourcing's ``save``).

        The first save of money events (anything but a seal) checks, and on a new
        store records, that the store's mode is this ledger's (see
        [`store_mode`][payout_ledger.store_mode]).
        """
        if not self._store_mode_settled and any(_is_money(o) for o in objs):
            self._settle_store_mode()
        return super().save(*objs, **kwargs)

    def _settle_store_mode(self) -> None:
        recorded, inferred = self._recorded_store_mode(), None
        if recorded is None:
            inferred = self._inferred_store_mode()
            # Written with a store's first money event, the record precedes the events
            # inferred from: a record written meanwhile by another process wins.
            recorded = self._recorded_store_mode()
        if recorded is None:
            simulated = self.store_mode is StoreMode.SIMULATED
            if inferred is not None and inferred is not simulated:
                raise self._mode_refused(
                    StoreMode.SIMULATED if inferred else None, "its events say so"
                )
            try:
                self.save(StoreModeRecord.declare(self.store_mode))
            except IntegrityError:  # another process declared it first
                recorded = self._recorded_store_mode()
                if recorded is None:
                    raise
        if recorded is not None and recorded is not self.store_mode:
            raise self._mode_refused(recorded, "it was recorded with its first money event")
        self._store_mode_settled = True

    def _recorded_store_mode(self) -> StoreMode | None:
        try:
            record = cast(StoreModeRecord, self.repository.get(StoreModeRecord.create_id()))
            return StoreMode(record.mode)
        except AggregateNotFoundError:
            return None
        except Exception as exc:
            raise ConfigurationError(
                f"the store's mode record cannot be read ({type(exc).__name__}): "
                "run payout-ledger verify"
            ) from exc

    def _inferred_store_mode(self) -> bool | None:
        """Whether a store written before modes were recorded is simulated (None: no sign)."""
        transfers = self.recorder.select_notifications(
            None, 1, topics=[PayoutAggregate.TransferSucceeded.TOPIC]
        )
        for notification in transfers:
            event = self.mapper.to_domain_event(notification)
            return bool(getattr(event, "simulated", False))
        started = self.recorder.select_notifications(
            None, 1, topics=[PayoutAggregate.PayoutStarted.TOPIC]
        )
        # Claims without any transfer yet: real unless proven otherwise.
        return False if started else None

    def _mode_refused(self, store: StoreMode | None, why: str) -> ConfigurationError:
        kind = "real (live or test)" if store is None else store.value
        return ConfigurationError(
            f"this store is {kind} ({why}); this ledger is {self.store_mode.value} and "
            "must not record money events in it: point it at a store of its own"
        )

    def __enter__(self) -> PayoutLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Queries.

    @staticmethod
    def payout_id(event_service_id: str) -> UUID:
        """The id of an event service's payout (uuid5 of the service id).

        Like [`find_payout`][payout_ledger.PayoutLedger.find_payout],
        [`get_payout`][payout_ledger.PayoutLedger.get_payout],
        [`history`][payout_ledger.PayoutLedger.history] and
        [`resume`][payout_ledger.PayoutLedger.resume], it raises
        [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an id no
        [`ReleaseRequest`][payout_ledger.ReleaseRequest] could have.
        """
        return PayoutAggregate.create_id(checked_identifier(event_service_id))

    @property
    def gateway(self) -> TransferGateway | None:
        """The transfer gateway this ledger calls (None when Stripe is disabled)."""
        return self._gateway

    def find_payout(self, event_service_id: str) -> PayoutAggregate | None:
        """The payout's current state, or None if it was never started."""
        return self._load(checked_identifier(event_service_id))

    def get_payout(self, event_service_id: str) -> PayoutAggregate:
        """The payout's current state, rebuilt from its events."""
        payout = self._load(checked_identifier(event_service_id))
        if payout is None:
            raise PayoutNotFoundError(event_service_id)
        return payout

    def history(self, event_service_id: str) -> list[PayoutAggregate.Event]:
        """The payout's events, oldest first (empty if it was never started)."""
        payout_id = self.payout_id(event_service_id)
        try:
            return [cast(PayoutAggregate.Event, e) for e in self.events.get(payout_id)]
        except MapperDeserialisationError as exc:
            raise LedgerIntegrityError(
                f"a stored event of payout {payout_id} cannot be read: {_first_cause(exc)}; "
                "run payout-ledger verify"
            ) from exc

    # Commands.

    def release_payment(self, request: ReleaseRequest | Mapping[str, Any]) -> ReleaseResult:
        """Release the event service's payment to its provider, exactly once.

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError],
        [`ProviderNotFoundError`][payout_ledger.ProviderNotFoundError] or
        [`ReleaseConflictError`][payout_ledger.ReleaseConflictError] before
        anything is recorded; every other outcome is a
        [`ReleaseResult`][payout_ledger.ReleaseResult].
        """
        req = ReleaseRequest.parse(request)
        decided = self._decide(req, self._provider(req))
        if isinstance(decided, ReleaseResult):
            return decided
        return self._conclude(decided.payout, self._call_gateway(decided.payout, decided.window))

    async def release_payment_async(
        self, request: ReleaseRequest | Mapping[str, Any]
    ) -> ReleaseResult:
        """[`release_payment`][payout_ledger.PayoutLedger.release_payment] for asyncio hosts.

        Store and directory calls run in worker threads, off the event loop; the
        Stripe call uses the gateway's ``create_transfer_async`` when it has one.
        The guarantees are the same: the claim is the same save.
        """
        req = ReleaseRequest.parse(request)
        provider = await asyncio.to_thread(self._provider, req)
        decided = await asyncio.to_thread(self._decide, req, provider)
        if isinstance(decided, ReleaseResult):
            return decided
        outcome = await self._call_gateway_async(decided.payout, decided.window)
        return await asyncio.to_thread(self._conclude, decided.payout, outcome)

    def resume_in_flight(self) -> list[ReleaseResult]:
        """Settle every payout left in flight (a crash, a timeout, a lost response).

        See [`resume`][payout_ledger.PayoutLedger.resume]. Safe to run at any
        time, from any number of processes. Each payout is settled on its own:
        one that cannot be (unreadable, or claimed without a destination) is
        answered ``outcome_unknown`` with ``error_code="cannot_resume"`` and
        logged, and the others go on.
        """
        return [self._resume_isolated(payout_id) for payout_id in self._in_flight_ids()]

    def resume(self, event_service_id: str) -> ReleaseResult:
        """Settle one in-flight payout without ever making a second transfer.

        Stripe is asked first: the attempt's transfer is looked up by its
        ``transfer_group`` and metadata. If Stripe has it, it is recorded. If
        not, the same request is sent again with the attempt's own key, inside
        a send window that opened before the lookup: Stripe makes the transfer
        now, or answers with the one it made meanwhile. A resume never starts a
        new attempt and never relies on any host's clock (docs/concepts.md
        gives the argument). The payout is read again after the lookup, so a
        resume that raced another one answers what the store now says.
        """
        return self._resume(self.get_payout(event_service_id))

    def in_flight(self) -> list[str]:
        """Event services whose payout has an attempt without an outcome.

        Reads the log once, in pages, keeping only each payout's last outcome.
        A payout whose events cannot be read is logged and left out (see
        [`resume_in_flight`][payout_ledger.PayoutLedger.resume_in_flight], which
        reports it).
        """
        services = []
        for payout_id in self._in_flight_ids():
            try:
                services.append(self.get_payout_by_id(payout_id).event_service_id)
            except Exception:
                logger.exception("in-flight payout %s cannot be read", payout_id)
        return sorted(services)

    def seal(self) -> SealInfo:
        """Seal the log: record its event count and rolling digest up to now.

        A seal is chained to the previous one, so removing the newest events or
        editing them is noticed by [`verify_ledger`][payout_ledger.audit.verify_ledger].
        Export each seal's ``seal_digest`` outside the database (see docs/audit.md).
        """
        from payout_ledger.audit.seal import seal_ledger

        return seal_ledger(self)

    # Stripe events (webhooks).

    def has_stripe_event(self, event_id: str) -> bool:
        """Whether this Stripe event id has been recorded.

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an
        id that is not 1-255 printable ASCII characters without spaces.
        """
        event_id = checked_stripe_id(event_id, "event id")
        try:
            self.repository.get(StripeEventRecord.create_id(event_id))
        except AggregateNotFoundError:
            return False
        return True

    def record_stripe_event(
        self, *, event: Mapping[str, Any], raw_body: bytes, headers: Mapping[str, str]
    ) -> StripeEventReceipt:
        """Record a verified Stripe event once, together with its effect.

        ``transfer.created``/``transfer.updated``/``transfer.reversed`` settle an
        in-flight payout whose response was lost and record reversals (the
        cumulative amount, so out-of-order deliveries add up), but only when the
        transfer is the one claimed: same payout, attempt, amount, currency and
        destination. ``payment_intent.succeeded`` records the payment as
        captured. Events of connected accounts (with a top-level ``account``)
        are the connected accounts' business, never the platform's: they are
        recorded for audit and change nothing. Every other type is kept for
        audit only. The record and its effect are saved in one transaction, so
        a duplicate delivery has no second effect.

        A connected account's event of the other mode is ignored (not recorded:
        Stripe sends a live-connected account's test-mode events to the live
        Connect endpoint too). Raises
        [`LivemodeMismatchError`][payout_ledger.LivemodeMismatchError] (nothing
        recorded) for a platform event of the other mode than this ledger's
        [`livemode`][payout_ledger.PayoutLedger.livemode], and
        [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an event
        without a string ``id``, ``type``, ``data.object``, or with an
        ``account`` or ``livemode`` of the wrong type, for an ``id`` or ``type``
        that is not 1-255 printable ASCII characters, a ``raw_body`` that is not
        UTF-8 bytes, headers that are not text, and any text that cannot be
        stored (a lone surrogate).
        """
        try:
            return self._record_stripe_event(event, raw_body, headers)
        except UnicodeEncodeError:
            raise InvalidRequestError(
                "a Stripe event holds text that is not valid Unicode (a lone surrogate)"
            ) from None

    def _record_stripe_event(
        self, event: Mapping[str, Any], raw_body: bytes, headers: Mapping[str, str]
    ) -> StripeEventReceipt:
        event_id, event_type, obj = _parse_stripe_event(event)
        event_id = checked_stripe_id(event_id, "event id")
        event_type = checked_stripe_id(event_type, "event type")
        if not isinstance(raw_body, bytes | bytearray | memoryview):
            raise InvalidRequestError(
                f"a Stripe event's raw_body is bytes, not {type(raw_body).__name__}"
            )
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise InvalidRequestError("a Stripe event's headers map str names to str values")
        account, livemode = _event_account(event), _event_livemode(event)
        if account is not None and self.other_mode(livemode):
            return StripeEventReceipt(
                event_id,
                event_type,
                StripeEventOutcome.IGNORED,
                None,
                f"a connected account's {'live' if livemode else 'test'}-mode event: not recorded",
            )
        self.check_livemode(livemode)
        try:
            body = bytes(raw_body).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError("a Stripe event body is UTF-8 JSON") from None
        for _ in range(self.settings.claim_attempts):
            if self.has_stripe_event(event_id):
                return StripeEventReceipt(event_id, event_type, StripeEventOutcome.DUPLICATE)
            if account is None:
                changed, outcome, event_service_id, detail = self._effect_of(
                    event_id, event_type, obj
                )
            else:
                changed, outcome, event_service_id = [], StripeEventOutcome.RECORDED, None
                detail = "a connected account's event: recorded only"
            record = StripeEventRecord.receive(
                stripe_event_id=event_id,
                event_type=event_type,
                livemode=bool(livemode),
                account=account,
                stripe_created=_optional_int(event.get("created")),
                raw_body=body,
                headers={str(k).lower(): str(v) for k, v in headers.items()},
                outcome=outcome.value,
                event_service_id=event_service_id,
            )
            try:
                self.save(record, *changed)
            except IntegrityError:
                continue  # a duplicate, or the payout moved: decide again
            return StripeEventReceipt(event_id, event_type, outcome, event_service_id, detail)
        raise LedgerBusyError(event_id, self.settings.claim_attempts)

    @property
    def livemode(self) -> bool | None:
        """Whether this ledger's Stripe events are live (True) or test (False).

        Read from ``settings.stripe_api_key`` (``sk_live_``/``rk_live_`` or
        ``sk_test_``/``rk_test_``), else from the gateway's ``livemode``
        (the Stripe gateway knows its key; the in-memory one is a test double);
        a ledger with Stripe disabled takes test events. ``None`` when it cannot
        be told (a host's own gateway without ``livemode``): then no event is
        refused for its mode.
        """
        key = self.settings.stripe_api_key
        if key is not None:
            from_key = livemode_of_key(key.get_secret_value())
            if from_key is not None:
                return from_key
        if not self.settings.stripe_enabled:
            return False
        mode = getattr(self._gateway, "livemode", None)
        return mode if isinstance(mode, bool) else None

    def other_mode(self, livemode: object) -> bool:
        """Whether an event's stated ``livemode`` is not this ledger's mode."""
        expected = self.livemode
        return isinstance(livemode, bool) and expected is not None and livemode is not expected

    def check_livemode(self, livemode: bool | None) -> None:
        """Raise [`LivemodeMismatchError`][payout_ledger.LivemodeMismatchError] for
        an event whose ``livemode`` is not this ledger's (``None``: not stated)."""
        expected = self.livemode
        if self.other_mode(livemode):
            raise LivemodeMismatchError(
                f"a {'live' if livemode else 'test'}-mode event reached a "
                f"{'live' if expected else 'test'}-mode ledger: check which webhook "
                "endpoint and secret deliver to this ledger"
            )

    def captured_payment(self, payment_intent_id: str) -> CapturedPayment | None:
        """The captured payment recorded for a PaymentIntent, if any.

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an
        id that is not 1-255 printable ASCII characters without spaces.
        """
        payment_intent_id = checked_stripe_id(payment_intent_id, "payment intent id")
        try:
            payment: object = self.repository.get(CapturedPayment.create_id(payment_intent_id))
        except AggregateNotFoundError:
            return None
        return cast(CapturedPayment, payment)

    # Internals.

    def _in_flight_ids(self) -> list[UUID]:
        topics = [
            PayoutAggregate.PayoutStarted.TOPIC,
            PayoutAggregate.TransferFailed.TOPIC,
            PayoutAggregate.TransferSucceeded.TOPIC,
        ]
        last: dict[UUID, str] = {}
        # Every id, those below 1 included; a row with impossible columns is skipped
        # here (its placeholder has another topic) and reported by verify and audit.
        for notification in iter_notifications(self, topics=topics, page_size=_PAGE):
            if notification.topic in topics:
                last[cast(UUID, notification.originator_id)] = notification.topic
        started = PayoutAggregate.PayoutStarted.TOPIC
        return [payout_id for payout_id, topic in last.items() if topic == started]

    def _resume_isolated(self, payout_id: UUID) -> ReleaseResult:
        """Resume one payout; whatever goes wrong stays with that payout."""
        payout: PayoutAggregate | None = None
        try:
            payout = self.get_payout_by_id(payout_id)
            return self._resume(payout)
        except ConfigurationError:
            raise  # the ledger cannot work on this store at all: not one payout's trouble
        except Exception as exc:
            logger.exception("payout %s could not be resumed", payout_id)
            return ReleaseResult(
                event_service_id=payout.event_service_id if payout else f"(payout {payout_id})",
                payout_id=payout_id,
                outcome=ReleaseOutcome.OUTCOME_UNKNOWN,
                attempt=payout.attempt if payout else None,
                error_code="cannot_resume",
                error_message=f"{type(exc).__name__}: {_first_cause(exc)}"[:500],
                detail="cannot resume",
            )

    def _resume(self, payout: PayoutAggregate) -> ReleaseResult:
        if payout.status is not PayoutStatus.IN_FLIGHT:
            return _result(payout, _OUTCOME_OF_STATUS[payout.status], detail="nothing in flight")
        if not self._store_mode_settled:
            self._settle_store_mode()  # before asking Stripe anything, in the wrong mode too
        if payout.attempt > 1:
            self._check_terms_kept(payout)
        if self._gateway is None or not self.settings.stripe_enabled:
            return self._conclude(payout, _simulated(payout), detail="simulated")
        window = self._open_window()
        try:
            found = self._find_transfers(payout)
        except GatewayError as exc:
            return _result(payout, ReleaseOutcome.OUTCOME_UNKNOWN, exc, detail="lookup failed")
        # Decide on the store as it is after the lookup: another resume, a webhook
        # or a release may have settled the payout while this one was asking.
        payout = self.get_payout_by_id(payout.id)
        if payout.status is not PayoutStatus.IN_FLIGHT:
            return _result(payout, _OUTCOME_OF_STATUS[payout.status], detail="settled meanwhile")
        current = [t for t in found if t.metadata.get("attempt") == str(payout.attempt)]
        if current:
            differs = claim_differences(payout, current[0])
            if differs:
                return _result(
                    payout,
                    ReleaseOutcome.OUTCOME_UNKNOWN,
                    detail=f"Stripe's transfer {current[0].id} differs from the claim: {differs}",
                )
            payout.record_transfer(transfer_id=current[0].id, request_id=None)
            return self._save_outcome(payout, ReleaseOutcome.RELEASED, detail="found at Stripe")
        if found:
            # A transfer of an attempt recorded as failed: the books disagree with
            # Stripe. Paying again could only make it worse; reconcile reports it.
            return _result(
                payout,
                ReleaseOutcome.OUTCOME_UNKNOWN,
                detail=f"Stripe has transfer {found[0].id} of another attempt",
            )
        return self._conclude(
            payout, self._call_gateway(payout, window), detail="retried with the same key"
        )

    def _check_terms_kept(self, payout: PayoutAggregate) -> None:
        """A later attempt pays what the first claimed (the ledger never writes otherwise).

        A claim appended behind the ledger's back (after the latest seal, where
        verify cannot see it) must not make a resume pay another amount.
        """
        [first, *_] = self.history(payout.event_service_id)
        claimed = (payout.amount, payout.currency, payout.provider_id)
        if claimed != (first.amount, first.currency, first.provider_id):  # type: ignore[attr-defined]
            raise LedgerIntegrityError(
                f"attempt {payout.attempt} of {payout.event_service_id!r} claims other terms "
                "than its first attempt: it is not sent; run payout-ledger audit"
            )

    def _open_window(self) -> SendWindow:
        """A send window opening now: take it before the claim or lookup it covers."""
        return SendWindow(
            opened=self._monotonic(),
            seconds=self.settings.stripe_idempotency_window,
            monotonic=self._monotonic,
            wall_opened=self._wall(),
            wall=self._wall,
        )

    def _wall(self) -> float:
        return self._clock.now().timestamp()

    def get_payout_by_id(self, payout_id: UUID) -> PayoutAggregate:
        """A payout by its own id.

        Raises [`LedgerIntegrityError`][payout_ledger.LedgerIntegrityError] when
        one of its stored events cannot be read (damaged, a topic the ledger
        does not write, the wrong cipher key): the ledger does not act on it.
        """
        try:
            return cast(PayoutAggregate, self.repository.get(payout_id))
        except AggregateNotFoundError:
            raise PayoutNotFoundError(str(payout_id)) from None
        except MapperDeserialisationError as exc:
            raise LedgerIntegrityError(
                f"a stored event of payout {payout_id} cannot be read: {_first_cause(exc)}; "
                "run payout-ledger verify"
            ) from exc

    def _provider(self, req: ReleaseRequest) -> ServiceProvider:
        provider = self._providers.get_provider(req.provider_id)
        if provider is None:
            raise ProviderNotFoundError(req.provider_id)
        return provider

    def _decide(self, req: ReleaseRequest, provider: ServiceProvider) -> ReleaseResult | _Claimed:
        """Claim the payout (and return it) or give the final answer.

        Most releases are first releases, so the claim of attempt 1 is tried
        before anything is read: version 1 of a payout can be saved only once,
        and a conflict hands back the stored payout to decide on. A re-release
        costs a refused insert instead of a read; a first release saves a read.
        """
        can_pay = provider.stripe_account_id is not None or not self.settings.stripe_enabled
        if can_pay:
            claim = self._claim(None, req, provider)
            if isinstance(claim, _Claimed):
                return claim
            payout = claim.stored
        else:
            payout = self._load(req.event_service_id)
        for _ in range(self.settings.claim_attempts):
            if payout is not None:
                _check_same_release(payout, req)
                if payout.is_paid:
                    return _result(payout, ReleaseOutcome.ALREADY_RELEASED)
                if payout.status is not PayoutStatus.FAILED:
                    return _result(payout, ReleaseOutcome.IN_PROGRESS)
            if not can_pay:
                return ReleaseResult(
                    event_service_id=req.event_service_id,
                    payout_id=self.payout_id(req.event_service_id),
                    outcome=ReleaseOutcome.ONBOARDING_REQUIRED,
                    error_code="onboarding_required",
                    error_message=f"provider {provider.id!r} has no Stripe account",
                )
            if payout is not None:
                refused = self._before_next_attempt(payout)
                if refused is not None:
                    return refused
            claim = self._claim(payout, req, provider)
            if isinstance(claim, _Claimed):
                return claim
            payout = claim.stored
            logger.info("release of %s lost the claim race", req.event_service_id)
        raise LedgerBusyError(req.event_service_id, self.settings.claim_attempts)

    def _before_next_attempt(self, payout: PayoutAggregate) -> ReleaseResult | None:
        """A new attempt may pay again: first make sure the failed one did not pay.

        The payout's log must chain (a copied or forged ``TransferFailed`` does
        not), and Stripe must have no transfer of this payout (a refusal Stripe
        did not store under its key, or a resume in another mode, could leave
        one). Raises [`LedgerIntegrityError`][payout_ledger.LedgerIntegrityError]
        when either says it did; answers ``failed`` (nothing sent) when Stripe
        cannot be asked.
        """
        broken = broken_link(self.history(payout.event_service_id), self.mapper.transcoder)
        if broken is not None:
            raise LedgerIntegrityError(
                f"the payout of {payout.event_service_id!r} does not chain ({broken}): "
                "it is not paid again; run payout-ledger verify"
            )
        if self._gateway is None or not self.settings.stripe_enabled:
            return None
        try:
            found = self._find_transfers(payout)
        except GatewayError as exc:
            return _result(
                payout,
                ReleaseOutcome.FAILED,
                exc,
                detail="not retried: Stripe could not be asked whether the failed attempt paid",
            )
        if found:
            logger.error(
                "Stripe has transfer %s for %s, whose attempt %d is recorded as failed",
                found[0].id,
                payout.event_service_id,
                payout.attempt,
            )
            raise LedgerIntegrityError(
                f"Stripe has transfer {found[0].id} (attempt {found[0].metadata.get('attempt')}) "
                f"for {payout.event_service_id!r}, whose attempt {payout.attempt} is recorded "
                "as failed: it is not paid again; run payout-ledger reconcile"
            )
        return None

    def _load(self, event_service_id: str) -> PayoutAggregate | None:
        try:
            return self.get_payout_by_id(PayoutAggregate.create_id(event_service_id))
        except PayoutNotFoundError:
            return None

    def _claim(
        self,
        payout: PayoutAggregate | None,
        req: ReleaseRequest,
        provider: ServiceProvider,
    ) -> _Claimed | _LostClaim:
        """Save the next attempt's ``PayoutStarted``: the claimed payout, or what beat it.

        The attempt's send window opens before the save, so it is open no longer
        than the claim has existed.
        """
        if payout is None:
            payout = PayoutAggregate.start(
                event_service_id=req.event_service_id,
                provider_id=provider.id,
                payee_user_id=provider.user_id,
                destination_account=provider.stripe_account_id,
                amount=req.amount.amount,
                currency=req.amount.currency,
                started_at=self._clock.now(),
            )
        else:
            payout.start_next_attempt(
                payee_user_id=provider.user_id,
                destination_account=provider.stripe_account_id,
                started_at=self._clock.now(),
            )
        window = self._open_window()
        try:
            self.save(payout)
        except IntegrityError:
            # Usually someone else's claim (or an earlier release). But when a
            # connection dies after the commit and before its acknowledgement, the
            # store's retry of our own insert hits the uniqueness constraint too: if
            # the stored claim is ours (same version, attempt, claim time and event
            # time, to the microsecond), we won it.
            stored = self._load(req.event_service_id)
            if stored is not None and _same_claim(stored, payout):
                logger.info(
                    "claim of %s was stored before its acknowledgement was lost",
                    req.event_service_id,
                )
                return _Claimed(stored, window)
            return _LostClaim(stored)
        return _Claimed(payout, window)

    def _transfer_request(self, payout: PayoutAggregate) -> TransferRequest:
        # Everything here comes from the recorded PayoutStarted, so a retry of
        # the attempt sends exactly the parameters Stripe stored under the key.
        if payout.destination_account is None:
            raise PayoutLedgerError(
                f"payout of {payout.event_service_id!r} was claimed without a connected "
                "account (Stripe was disabled): it cannot be sent to Stripe"
            )
        return TransferRequest(
            amount=payout.amount,
            currency=payout.currency,
            destination=payout.destination_account,
            idempotency_key=payout.idempotency_key,
            transfer_group=payout.transfer_group,
            metadata={
                "event_service_id": payout.event_service_id,
                "payout_id": str(payout.id),
                "attempt": str(payout.attempt),
            },
        )

    def _call_gateway(
        self, payout: PayoutAggregate, window: SendWindow
    ) -> TransferResult | GatewayError:
        if self._gateway is None or not self.settings.stripe_enabled:
            return _simulated(payout)
        try:
            request = self._transfer_request(payout)
            window.check()
            with sending_within(window):
                return self._gateway.create_transfer(request)
        except GatewayError as exc:
            return exc

    async def _call_gateway_async(
        self, payout: PayoutAggregate, window: SendWindow
    ) -> TransferResult | GatewayError:
        if self._gateway is None or not self.settings.stripe_enabled:
            return _simulated(payout)
        create_async = getattr(self._gateway, "create_transfer_async", None)
        try:
            request = self._transfer_request(payout)
            window.check()
            with sending_within(window):
                if create_async is not None:
                    return cast(TransferResult, await create_async(request))
                return await asyncio.to_thread(self._gateway.create_transfer, request)
        except GatewayError as exc:
            return exc

    def _find_transfers(self, payout: PayoutAggregate) -> list[StripeTransfer]:
        if self._gateway is None:
            return []
        return [
            t
            for t in self._gateway.list_transfers(transfer_group=payout.transfer_group)
            if t.metadata.get("payout_id") == str(payout.id)
        ]

    def _conclude(
        self,
        payout: PayoutAggregate,
        outcome: TransferResult | GatewayError,
        detail: str | None = None,
    ) -> ReleaseResult:
        if isinstance(outcome, TransferResult):
            payout.record_transfer(
                transfer_id=outcome.transfer_id,
                request_id=outcome.request_id,
                simulated=outcome.transfer_id.startswith(SIMULATED_PREFIX),
            )
            return self._save_outcome(payout, ReleaseOutcome.RELEASED, detail=detail)
        if isinstance(outcome, TransferDeclined):
            payout.record_failure(
                code=outcome.code, message=outcome.message, request_id=outcome.request_id
            )
            return self._save_outcome(payout, ReleaseOutcome.FAILED, outcome, detail)
        if isinstance(outcome, TransferNotExecuted):
            return _result(payout, ReleaseOutcome.NOT_EXECUTED, outcome, detail)
        stored = self._load(payout.event_service_id)
        if stored is not None and stored.status is not PayoutStatus.IN_FLIGHT:
            # Another process (a resume, a webhook) settled it while we waited.
            return _result(stored, _OUTCOME_OF_STATUS[stored.status], detail="settled meanwhile")
        logger.warning(
            "transfer outcome unknown for %s (attempt %d); payout left in flight",
            payout.event_service_id,
            payout.attempt,
        )
        return _result(payout, ReleaseOutcome.OUTCOME_UNKNOWN, outcome, detail)

    def _effect_of(
        self, event_id: str, event_type: str, obj: Mapping[str, Any]
    ) -> tuple[list[Aggregate], StripeEventOutcome, str | None, str | None]:
        if event_type == "payment_intent.succeeded":
            return self._capture_payment(event_id, obj)
        if event_type in _TRANSFER_EVENTS:
            return self._apply_transfer_report(event_id, obj)
        return [], StripeEventOutcome.RECORDED, None, None

    def _capture_payment(
        self, event_id: str, obj: Mapping[str, Any]
    ) -> tuple[list[Aggregate], StripeEventOutcome, str | None, str | None]:
        try:
            payment_intent_id = str(obj["id"])
            amount, currency = int(obj["amount"]), str(obj["currency"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InvalidRequestError(
                "payment_intent.succeeded without id/amount/currency"
            ) from None
        if self.captured_payment(payment_intent_id) is not None:
            return [], StripeEventOutcome.RECORDED, None, "payment already captured"
        try:
            metadata = string_metadata(obj.get("metadata"))
        except TypeError as exc:
            raise InvalidRequestError(f"payment_intent.succeeded: {exc}") from None
        payment = CapturedPayment.capture(
            payment_intent_id=payment_intent_id,
            amount=amount,
            currency=currency,
            metadata=metadata,
            stripe_event_id=event_id,
        )
        return [payment], StripeEventOutcome.APPLIED, metadata.get("event_service_id"), None

    def _apply_transfer_report(
        self, event_id: str, obj: Mapping[str, Any]
    ) -> tuple[list[Aggregate], StripeEventOutcome, str | None, str | None]:
        try:
            transfer = StripeTransfer.from_stripe(obj)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InvalidRequestError("a transfer event without id/amount/currency") from None
        event_service_id = transfer.metadata.get("event_service_id")
        payout = self._load(event_service_id) if event_service_id else None
        if payout is None or transfer.metadata.get("payout_id") != str(payout.id):
            return [], StripeEventOutcome.RECORDED, None, "not a transfer of this ledger"
        differs = claim_differences(payout, transfer)
        if differs:
            logger.warning(
                "Stripe reports transfer %s for %s unlike its claim: %s",
                transfer.id,
                event_service_id,
                differs,
            )
            return [], StripeEventOutcome.RECORDED, event_service_id, f"not the claim: {differs}"
        settled = False
        if payout.status is PayoutStatus.IN_FLIGHT:
            payout.record_transfer(transfer_id=transfer.id, request_id=None)
            settled = True
        if payout.transfer_id != transfer.id:
            logger.warning(
                "Stripe reports transfer %s for %s, the ledger has %s",
                transfer.id,
                event_service_id,
                payout.transfer_id,
            )
            return [], StripeEventOutcome.RECORDED, event_service_id, "transfer differs"
        reversed_now = payout.record_reversal(
            transfer_id=transfer.id,
            amount_reversed=transfer.amount_reversed,
            stripe_event_id=event_id,
        )
        if settled or reversed_now:
            detail = "settled" if settled else "reversal recorded"
            return [payout], StripeEventOutcome.APPLIED, event_service_id, detail
        return [], StripeEventOutcome.RECORDED, event_service_id, None

    def _save_outcome(
        self,
        payout: PayoutAggregate,
        outcome: ReleaseOutcome,
        error: Exception | None = None,
        detail: str | None = None,
    ) -> ReleaseResult:
        try:
            self.save(payout)
        except IntegrityError:
            # Someone settled this attempt first (a resume or a webhook). The
            # stored outcome wins; ours is dropped, never written twice.
            stored = self.get_payout(payout.event_service_id)
            ours, theirs = payout.transfer_id, stored.transfer_id
            if ours is not None and theirs is not None and ours != theirs:
                # Two transfers for one payout: never expected, always reported.
                logger.error(
                    "DUPLICATE TRANSFER for %s: Stripe answered %s, the ledger recorded %s; "
                    "run payout-ledger reconcile",
                    payout.event_service_id,
                    ours,
                    theirs,
                )
                return _result(
                    stored,
                    _OUTCOME_OF_STATUS[stored.status],
                    detail=f"duplicate transfer {ours}: reconcile",
                )
            return _result(stored, _OUTCOME_OF_STATUS[stored.status])
        return _result(payout, outcome, error, detail)


_CIPHER_SAMPLE = 5
_CIPHER_TOPIC = "eventsourcing.cryptography:AESCipher"


_STORE_FAILURES = (PersistenceError, psycopg.Error, sqlite3.Error, OSError, ValueError)
"""What eventsourcing and the drivers raise when a store cannot be opened or set up."""


def _store_environment(settings: LedgerSettings, name: str, must_exist: bool) -> dict[str, str]:
    """The eventsourcing environment of the settings' store, after checking the store.

    PostgreSQL: one connection first (``postgres_connect_timeout``), so that a
    refused password or an unreachable host is said at once, with its reason,
    instead of after the pool's wait; the schema must exist, and with
    ``must_exist`` the events table too. SQLite with ``must_exist``: the file
    must exist and hold the events table; nothing is created.
    """
    env = store_environment(settings)  # ConfigurationError for a URL that names no store
    module = env["PERSISTENCE_MODULE"]
    if must_exist and module == "eventsourcing.popo":
        raise ConfigurationError(
            "must_exist=True cannot open an in-memory store (memory://): it exists only "
            "in the process that made it"
        )
    if must_exist and module == "eventsourcing.sqlite":
        _check_sqlite_store(settings.store_url, env["SQLITE_DBNAME"])
    if module == "eventsourcing.postgres":
        _check_postgres_store(settings, env, f"{name.lower()}_events", must_exist)
    if must_exist:
        env["CREATE_TABLE"] = "no"
    return env


_SQLITE_EVENTS_TABLE = "stored_events"


def _check_sqlite_store(url: str, path: str) -> None:
    try:
        exists = Path(path).exists()
    except (OSError, ValueError) as exc:  # a name the file system refuses
        raise _unavailable_url(url, _first_line(str(exc)) or type(exc).__name__) from None
    if not exists:
        raise StoreNotFoundError(
            f"no store at {url}: the file {path} does not exist",
            url=url,
            reason="the file does not exist",
        )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (_SQLITE_EVENTS_TABLE,),
            ).fetchone()
    except sqlite3.Error as exc:
        raise _unavailable_url(url, _first_line(str(exc)) or type(exc).__name__) from exc
    if found is None:
        raise StoreNotFoundError(
            f"no store at {url}: the file {path} has no table {_SQLITE_EVENTS_TABLE}",
            url=url,
            reason=f"no table {_SQLITE_EVENTS_TABLE}",
        )


def _check_postgres_store(
    settings: LedgerSettings, env: Mapping[str, str], table: str, must_exist: bool
) -> None:
    url = redact_url(settings.store_url)
    password = env["POSTGRES_PASSWORD"]
    schema = env.get("POSTGRES_SCHEMA") or "public"
    try:
        with psycopg.connect(
            dbname=env["POSTGRES_DBNAME"],
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            password=password,
            connect_timeout=settings.postgres_connect_timeout,
            autocommit=True,
        ) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchone():
                reason = f'schema "{schema}" does not exist'
                raise StoreNotFoundError(f"no store at {url}: {reason}", url=url, reason=reason)
            if (
                must_exist
                and not conn.execute(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                    (schema, table),
                ).fetchone()
            ):
                reason = f'table "{schema}.{table}" does not exist'
                raise StoreNotFoundError(f"no store at {url}: {reason}", url=url, reason=reason)
    except psycopg.Error as exc:
        reason = _first_line(str(exc)) or type(exc).__name__
        if password:
            reason = reason.replace(password, "***")
        raise _unavailable_url(url, reason) from None


def _unavailable(settings: LedgerSettings, exc: BaseException) -> StoreUnavailableError:
    cause = _first_cause(exc) or type(exc).__name__
    reason = _first_line(cause) or type(exc).__name__
    password = _password_of(settings.store_url)
    if password:
        reason = reason.replace(password, "***")
    return _unavailable_url(redact_url(settings.store_url), reason)


def _unavailable_url(url: str, reason: str) -> StoreUnavailableError:
    return StoreUnavailableError(f"cannot open the store {url}: {reason}", url=url, reason=reason)


def _password_of(url: str) -> str | None:
    return urlsplit(url).password


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


_SECRET_ENVIRONMENT = ("POSTGRES_PASSWORD", "CIPHER_KEY")
"""eventsourcing settings that hold secrets: read while the ledger is built, then
dropped from ``ledger.env`` so that no copy of them stays readable there."""


def _forget_secrets(env: dict[str, str]) -> None:
    # The datastore's pool and the cipher keep what they need; the environment
    # (shared with ledger.factory.env) is not needed once they are built.
    for name in _SECRET_ENVIRONMENT:
        env.pop(name, None)


def _cipher_environment(settings: LedgerSettings) -> dict[str, str]:
    """CIPHER_TOPIC and CIPHER_KEY when the settings name a key (the key is
    dropped from ``ledger.env`` once the cipher is built)."""
    if settings.cipher_key is None:
        return {}
    key = settings.cipher_key.get_secret_value()
    try:
        size = len(base64.b64decode(key.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeEncodeError):
        raise ConfigurationError("cipher_key is not base64") from None
    if size not in (16, 24, 32):
        raise ConfigurationError(f"cipher_key is {size} bytes; AES needs 16, 24 or 32")
    return {"CIPHER_TOPIC": _CIPHER_TOPIC, "CIPHER_KEY": key}


class _ExplainedCipher(Cipher):
    """The configured cipher, with a decryption error that says what is wrong."""

    def __init__(self, cipher: Cipher) -> None:  # wraps a cipher, not built from env
        self._cipher = cipher

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._cipher.encrypt(plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        try:
            return self._cipher.decrypt(ciphertext)
        except ValueError:
            raise ValueError(
                "cannot decrypt a stored event: the cipher_key is wrong, the store "
                "was written without encryption, or the event is damaged"
            ) from None


def _is_money(obj: object) -> bool:
    """Whether saving ``obj`` records money events (anything but a seal or the mode)."""
    return obj is not None and not isinstance(obj, LedgerSeal | StoreModeRecord)


def _first_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)


_OUTCOME_OF_STATUS = {
    PayoutStatus.RELEASED: ReleaseOutcome.RELEASED,
    PayoutStatus.REVERSED: ReleaseOutcome.RELEASED,
    PayoutStatus.TRANSFERRED: ReleaseOutcome.IN_PROGRESS,
    PayoutStatus.IN_FLIGHT: ReleaseOutcome.IN_PROGRESS,
    PayoutStatus.FAILED: ReleaseOutcome.FAILED,
}


@dataclass(frozen=True)
class _Claimed:
    """A claim this caller saved, and the window in which it may send its request."""

    payout: PayoutAggregate
    window: SendWindow


@dataclass(frozen=True)
class _LostClaim:
    """A claim refused by the store, with the payout stored instead (if readable)."""

    stored: PayoutAggregate | None


def _same_claim(stored: PayoutAggregate, ours: PayoutAggregate) -> bool:
    return (
        stored.version == ours.version
        and stored.status is PayoutStatus.IN_FLIGHT
        and stored.attempt == ours.attempt
        and stored.attempt_started_at == ours.attempt_started_at
        and stored.modified_on == ours.modified_on
    )


def claim_differences(payout: PayoutAggregate, transfer: StripeTransfer) -> str | None:
    """What a transfer at Stripe has that the payout's current claim does not, or None.

    A transfer settles a payout only when it is of the claimed attempt and has
    the claimed amount, currency and destination.
    """
    claimed = {
        "attempt": str(payout.attempt),
        "amount": payout.amount,
        "currency": payout.currency,
        "destination": payout.destination_account,
        "payout_id": str(payout.id),
    }
    reported = {
        "attempt": transfer.metadata.get("attempt"),
        "amount": transfer.amount,
        "currency": transfer.currency,
        "destination": transfer.destination,
        "payout_id": transfer.metadata.get("payout_id"),
    }
    differing = [
        f"{name} {reported[name]!r} (claimed {value!r})"
        for name, value in claimed.items()
        if reported[name] != value
    ]
    return ", ".join(differing) or None


def _check_same_release(payout: PayoutAggregate, req: ReleaseRequest) -> None:
    for field, recorded, requested in (
        ("provider_id", payout.provider_id, req.provider_id),
        ("amount", payout.amount, req.amount.amount),
        ("currency", payout.currency, req.amount.currency),
    ):
        if recorded != requested:
            raise ReleaseConflictError(req.event_service_id, field, recorded, requested)


def _result(
    payout: PayoutAggregate,
    outcome: ReleaseOutcome,
    error: Exception | None = None,
    detail: str | None = None,
) -> ReleaseResult:
    code = getattr(error, "code", None)
    return ReleaseResult(
        event_service_id=payout.event_service_id,
        payout_id=payout.id,
        outcome=outcome,
        transfer_id=payout.transfer_id,
        attempt=payout.attempt,
        idempotency_key=payout.idempotency_key,
        error_code=code,
        error_message=getattr(error, "message", None),
        stripe_request_id=getattr(error, "request_id", None),
        detail=detail,
    )


def _simulated(payout: PayoutAggregate) -> TransferResult:
    # Stripe disabled (local development): nothing moves.
    return TransferResult(transfer_id=f"{SIMULATED_PREFIX}{payout.id.hex}_{payout.attempt}")


def _parse_stripe_event(event: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    if not isinstance(event, Mapping):
        raise InvalidRequestError("a Stripe event is a JSON object")
    event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise InvalidRequestError("a Stripe event needs a string id and type")
    if not isinstance(obj, Mapping):
        raise InvalidRequestError("a Stripe event needs data.object")
    return event_id, event_type, obj


def _event_account(event: Mapping[str, Any]) -> str | None:
    """The connected account an event belongs to (None: the platform's own)."""
    account = event.get("account")
    if account is None:
        return None
    if not isinstance(account, str) or not account:
        raise InvalidRequestError("a Stripe event's account is a connected account id")
    return account


def _event_livemode(event: Mapping[str, Any]) -> bool | None:
    livemode = event.get("livemode")
    if livemode is not None and not isinstance(livemode, bool):
        raise InvalidRequestError("a Stripe event's livemode is true or false")
    return livemode


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
