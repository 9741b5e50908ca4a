"""The ledger's core: its settings, store, clock and mode, and the queries every use case needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.domain import BaseAggregate
from eventsourcing.persistence import (
    IntegrityError,
    MapperDeserialisationError,
)

from payout_ledger.adapters.store import StoreWiring, first_cause
from payout_ledger.domain.account import AccountPayability
from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.domain.store_mode import StoreMode, StoreModeRecord
from payout_ledger.errors import (
    ConfigurationError,
    LedgerIntegrityError,
    LivemodeMismatchError,
    PayoutNotFoundError,
)
from payout_ledger.service.payable_accounts import PayableAccounts
from payout_ledger.service.ports import (
    Clock,
    ProviderDirectory,
    SendWindow,
    SystemClock,
    TransferGateway,
    monotonic_of,
)
from payout_ledger.service.requests import (
    checked_identifier,
)
from payout_ledger.settings import LedgerSettings, livemode_of_key

__all__ = ["LedgerCore"]


class LedgerCore(StoreWiring):
    """What every use case of the ledger stands on: settings, store, clock and queries.

    The use cases ([`Releasing`][payout_ledger.service.release.Releasing],
    [`Resuming`][payout_ledger.service.resume.Resuming],
    [`StripeEventEffects`][payout_ledger.service.stripe_event_effects.StripeEventEffects])
    derive from it, and [`PayoutLedger`][payout_ledger.PayoutLedger] combines them.
    """

    name = "PayoutLedger"  # pinned: it names the PostgreSQL table payoutledger_events

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # eventsourcing names each subclass after itself, which would give a host's
        # subclass another table and hide every payout already recorded.
        pinned = "name" in cls.__dict__
        super().__init_subclass__(**kwargs)
        if not pinned:
            cls.name = LedgerCore.name

    def __init__(
        self,
        *,
        settings: LedgerSettings,
        providers: ProviderDirectory,
        gateway: TransferGateway | None = None,
        clock: Clock | None = None,
        must_exist: bool = False,
        on_payability_changed: Callable[[AccountPayability], None] | None = None,
    ) -> None:
        """Open the store named by ``settings.store_url`` (creating its tables unless
        ``must_exist``) and check that its events can be read with these settings.

        ``on_payability_changed(payability)`` is called after a report that changes
        whether (or why) a connected account can be paid has been saved (see
        [`account_payability`][payout_ledger.PayoutLedger.account_payability]); an
        exception it raises is logged and changes nothing recorded.

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
        self._on_payability_changed = on_payability_changed
        self._clock: Clock = clock or SystemClock()
        self._monotonic = monotonic_of(self._clock)
        self._payable_accounts = PayableAccounts(settings.payability_cache_seconds, self._monotonic)
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
        self._open_store(settings, must_exist)
        # A store that has its mode already needs no check on the write path; a
        # mismatch is refused on the first money event (reading stays possible).
        try:
            self._store_mode_settled = self._recorded_store_mode() is self.store_mode
        except ConfigurationError:
            self._store_mode_settled = False  # said again, and refused, on the first write

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """Save aggregates' new events in one transaction (eventsourcing's ``save``).

        The first save of money events (anything but a seal) checks, and on a new
        store records, that the store's mode is this ledger's (see
        [`store_mode`][payout_ledger.domain.store_mode]).
        """
        if not self._store_mode_settled and any(_is_money(o) for o in objs):
            self._settle_store_mode()
        # eventsourcing's Application.save, step for step, but for the collecting: its
        # ProcessingEvent tells aggregates from events by runtime Protocol checks, which
        # cost several microseconds an object on Python 3.11 (see ``_collected``).
        processing_event = _collected(objs, kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # eventsourcing's deprecated hook, as it calls it
        return recordings

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

    def __enter__(self) -> Self:
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
                f"a stored event of payout {payout_id} cannot be read: {first_cause(exc)}; "
                "run payout-ledger verify"
            ) from exc

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
                f"a stored event of payout {payout_id} cannot be read: {first_cause(exc)}; "
                "run payout-ledger verify"
            ) from exc

    def _load(self, event_service_id: str) -> PayoutAggregate | None:
        try:
            return self.get_payout_by_id(PayoutAggregate.create_id(event_service_id))
        except PayoutNotFoundError:
            return None

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


def _is_money(obj: object) -> bool:
    """Whether saving ``obj`` records money events (anything but a seal or the mode)."""
    return obj is not None and not isinstance(obj, LedgerSeal | StoreModeRecord)


def _collected(objs: tuple[Any, ...], kwargs: dict[str, Any]) -> ProcessingEvent[UUID]:
    """``ProcessingEvent.collect_events(*objs, **kwargs)``, with an aggregate known by
    its class: the same events, aggregates and keywords, collected the same way."""
    processing_event: ProcessingEvent[UUID] = ProcessingEvent()
    for obj in objs:
        if isinstance(obj, BaseAggregate):
            processing_event.events.extend(obj.collect_events())
            processing_event.aggregates[obj.id] = obj
        else:  # an event, or None: eventsourcing's own collecting
            processing_event.collect_events(obj)
    processing_event.saved_kwargs.update(kwargs)
    return processing_event
