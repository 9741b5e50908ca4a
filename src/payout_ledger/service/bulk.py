"""Bulk releases: a batch of releases under the store-shared rate budget.

Each item is released by [`release_payment`][payout_ledger.PayoutLedger.release_payment]
itself, so each keeps its own exactly-once guarantee: the claim is the same
save, the request the same key. A batch cut short (a crash, a kill) loses
nothing, and running it again answers ``already_released`` for what was paid,
settles what the crash left in flight (Stripe asked first), and pays nobody twice.

The batch is checked before anything is recorded: an item that is not a release
request, or an event service named twice, refuses the whole batch with
[`BulkRequestError`][payout_ledger.errors.BulkRequestError]. A batch is usually
an export of the host's own rows, and a malformed one is a bug to fix before
anyone is paid, not half a batch to pick apart. What only the ledger or Stripe
can tell (an unknown provider, another amount than recorded, a charge that cannot
fund the transfer) is answered per item, as ``rejected`` with the error, and the
others go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from payout_ledger.adapters.rate_budget import open_rate_budget
from payout_ledger.errors import (
    BulkRequestError,
    InvalidRequestError,
    LedgerBusyError,
    LedgerIntegrityError,
    PayoutLedgerError,
    PayoutNotFoundError,
    ProviderNotFoundError,
    ReleaseConflictError,
)
from payout_ledger.service.governor import (
    RateGovernor,
    RequestNotes,
    governed_by,
    noting_requests,
)
from payout_ledger.service.ports import elapsed_seconds
from payout_ledger.service.release import Releasing
from payout_ledger.service.requests import ReleaseOutcome, ReleaseRequest, ReleaseResult
from payout_ledger.service.resume import Resuming

__all__ = ["BulkItemResult", "BulkReleaseReport", "BulkReleasing"]

REJECTED = "rejected"
"""The outcome of an item refused by the ledger (its ``error`` says why)."""

_ITEM_ERRORS = (
    InvalidRequestError,  # SourceTransactionError among them
    ProviderNotFoundError,
    ReleaseConflictError,
    LedgerBusyError,
    LedgerIntegrityError,
    PayoutNotFoundError,
)
"""Errors that concern one item: answered for it, and the batch goes on. Anything
else (the store gone, a configuration that cannot work) stops the batch."""

_SETTLED = (ReleaseOutcome.RELEASED, ReleaseOutcome.ALREADY_RELEASED)


@dataclass(frozen=True)
class BulkItemResult:
    """One item of a batch: its release's result, or the error that refused it."""

    index: int
    """The item's place in the batch (0-based)."""
    event_service_id: str
    result: ReleaseResult | None
    """The release's answer; None when the item was refused (``error``)."""
    error: PayoutLedgerError | None = None
    """Why the ledger refused the item (unknown provider, conflicting terms...)."""
    seconds: float = 0.0
    """Seconds spent on the item in the ledger, Stripe and the rate budget included."""

    @property
    def outcome(self) -> str:
        """The release's outcome (``released``, ``not_executed``...) or ``rejected``."""
        return self.result.outcome.value if self.result is not None else REJECTED

    @property
    def success(self) -> bool:
        """The provider is paid (by this batch or earlier)."""
        return self.result is not None and self.result.success


@dataclass(frozen=True)
class BulkReleaseReport:
    """A batch's results in input order, with counts and the rate budget's figures."""

    items: list[BulkItemResult]
    seconds: float
    """Wall-clock seconds of the whole batch."""
    governor: dict[str, float] | None = None
    """What the rate governor did (tokens, seconds waited, seconds in HTTP, 429s,
    retries, back-off); None for an ungoverned batch."""
    counts: dict[str, int] = field(init=False)
    """How many items ended in each outcome."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", dict(Counter(item.outcome for item in self.items)))

    @property
    def all_released(self) -> bool:
        """Every item's provider is paid (``released`` or ``already_released``)."""
        return all(item.success for item in self.items)

    def summary(self) -> dict[str, Any]:
        """Counts and figures as JSON-ready values (no ids)."""
        return {
            "items": len(self.items),
            "released": sum(1 for i in self.items if i.success),
            "counts": dict(sorted(self.counts.items())),
            "seconds": round(self.seconds, 3),
            "governor": self.governor,
        }


class BulkReleasing(Releasing, Resuming):
    """Releasing a batch of payments under the shared rate budget."""

    def rate_governor(self) -> RateGovernor:
        """A governor on this store's rate budget ``settings.bulk_rate_budget``, at
        ``bulk_rate_limit x bulk_rate_share`` requests per second for every process
        and host sharing the store (the budget's table is created if missing).

        Use it for a host's own bulk Stripe calls with
        [`governed_by`][payout_ledger.service.governor.governed_by].
        """
        settings = self.settings
        datastore = getattr(self.factory, "datastore", None)
        budget = open_rate_budget(
            datastore, settings.bulk_rate_budget, create=settings.create_tables
        )
        return RateGovernor(
            budget,
            rate=settings.bulk_rate_limit * settings.bulk_rate_share,
            backoff_max=settings.bulk_backoff_max,
            retries=settings.bulk_rate_limit_retries,
        )

    def release_many(
        self,
        requests: Iterable[ReleaseRequest | Mapping[str, Any]],
        *,
        concurrency: int = 4,
        on_result: Callable[[BulkItemResult], None] | None = None,
        governed: bool = True,
        resume_in_progress: bool = True,
    ) -> BulkReleaseReport:
        """Release every request of the batch, ``concurrency`` at a time, each exactly once.

        Every HTTP request to Stripe (transfers, lookups, the SDK's retries) first
        takes a token of the store-shared rate budget (see
        [`rate_governor`][payout_ledger.PayoutLedger.rate_governor]); a 429 backs the
        whole budget off and the same request is sent again with its key while
        its send window is open. A release Stripe still did not execute is
        resumed after the back-off (``bulk_resume_rounds`` times) rather than
        answered ``not_executed``, unless Stripe said ``Stripe-Should-Retry: false``.
        ``governed=False`` sends without the budget (for comparison only).

        An item answered ``in_progress`` (a run cut short left it in flight) is
        resumed, Stripe asked first, unless ``resume_in_progress=False``: set it when
        other processes may be releasing the same event services at the same time.

        ``on_result(item)`` is called in this thread as each item ends. Raises
        [`BulkRequestError`][payout_ledger.errors.BulkRequestError] before anything
        is recorded when an item is not a release request or an event service is
        named twice; errors of one item (an unknown provider, other terms than
        recorded) are answered as that item's ``rejected`` result. Any other error
        stops the batch (nothing is lost: run it again).
        """
        batch = _checked_batch(requests)
        if concurrency < 1:
            raise InvalidRequestError("concurrency is at least 1")
        governor = self._bulk_governor(governed)
        started = elapsed_seconds()
        results: list[BulkItemResult | None] = [None] * len(batch)
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="payout-ledger-bulk"
        ) as pool:
            try:
                for item in _bounded(
                    pool,
                    ((index, req, governor, resume_in_progress) for index, req in enumerate(batch)),
                    self._release_item,
                    limit=concurrency * 2,
                ):
                    results[item.index] = item
                    if on_result is not None:
                        on_result(item)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return _report(results, started, governor)

    async def release_many_async(
        self,
        requests: Iterable[ReleaseRequest | Mapping[str, Any]],
        *,
        concurrency: int = 4,
        on_result: Callable[[BulkItemResult], Awaitable[None] | None] | None = None,
        governed: bool = True,
        resume_in_progress: bool = True,
    ) -> BulkReleaseReport:
        """[`release_many`][payout_ledger.PayoutLedger.release_many] for asyncio hosts.

        ``concurrency`` releases run as tasks, each through
        [`release_payment_async`][payout_ledger.PayoutLedger.release_payment_async];
        tokens are awaited without blocking the event loop. ``on_result`` may be
        a coroutine function.
        """
        batch = _checked_batch(requests)
        if concurrency < 1:
            raise InvalidRequestError("concurrency is at least 1")
        governor = await asyncio.to_thread(self._bulk_governor, governed)
        started = elapsed_seconds()
        results: list[BulkItemResult | None] = [None] * len(batch)
        pending = iter(enumerate(batch))
        done: asyncio.Queue[BulkItemResult] = asyncio.Queue()

        async def worker() -> None:
            for index, req in pending:
                await done.put(
                    await self._release_item_async(index, req, governor, resume_in_progress)
                )

        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(batch)))]
        try:
            for _ in batch:
                getter = asyncio.ensure_future(done.get())
                finished, _ = await asyncio.wait(
                    [getter, *workers], return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in finished:
                    getter.cancel()
                    for task in finished:
                        task.result()  # a worker that failed: raise its error
                    item = await done.get()
                else:
                    item = getter.result()
                results[item.index] = item
                if on_result is not None:
                    answer = on_result(item)
                    if asyncio.iscoroutine(answer):
                        await answer
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return _report(results, started, governor)

    def _bulk_governor(self, governed: bool) -> RateGovernor | None:
        if not governed or self._gateway is None or not self.settings.stripe_enabled:
            return None
        return self.rate_governor()

    def _release_item(
        self,
        index: int,
        req: ReleaseRequest,
        governor: RateGovernor | None,
        resume_in_progress: bool,
    ) -> BulkItemResult:
        started = elapsed_seconds()
        with governed_by(governor), noting_requests() as notes:
            try:
                result = self.release_payment(req)
                rounds = 0
                while _resume_next(result, notes, governor, resume_in_progress, rounds, self):
                    rounds += 1
                    result = self.resume(req.event_service_id)
            except _ITEM_ERRORS as exc:
                return _rejected(index, req, exc, started)
        return BulkItemResult(
            index, req.event_service_id, result, seconds=elapsed_seconds() - started
        )

    async def _release_item_async(
        self,
        index: int,
        req: ReleaseRequest,
        governor: RateGovernor | None,
        resume_in_progress: bool,
    ) -> BulkItemResult:
        started = elapsed_seconds()
        with governed_by(governor), noting_requests() as notes:
            try:
                result = await self.release_payment_async(req)
                rounds = 0
                while _resume_next(result, notes, governor, resume_in_progress, rounds, self):
                    rounds += 1
                    result = await asyncio.to_thread(self.resume, req.event_service_id)
            except _ITEM_ERRORS as exc:
                return _rejected(index, req, exc, started)
        return BulkItemResult(
            index, req.event_service_id, result, seconds=elapsed_seconds() - started
        )


def _resume_next(
    result: ReleaseResult,
    notes: RequestNotes,
    governor: RateGovernor | None,
    resume_in_progress: bool,
    rounds: int,
    ledger: BulkReleasing,
) -> bool:
    """Whether the item's payout, left in flight, is resumed once more."""
    if rounds == 0 and resume_in_progress and result.outcome is ReleaseOutcome.IN_PROGRESS:
        return True  # left in flight by an earlier run (or being sent by another process)
    if governor is None or result.outcome is not ReleaseOutcome.NOT_EXECUTED:
        return False
    # Stripe said not to send it again: it stays in flight for an operator's resume.
    return not notes.should_not_retry and rounds < ledger.settings.bulk_resume_rounds


def _rejected(
    index: int, req: ReleaseRequest, exc: PayoutLedgerError, started: float
) -> BulkItemResult:
    return BulkItemResult(
        index, req.event_service_id, None, error=exc, seconds=elapsed_seconds() - started
    )


def _checked_batch(requests: Iterable[ReleaseRequest | Mapping[str, Any]]) -> list[ReleaseRequest]:
    """Every item parsed, or BulkRequestError listing the bad ones (nothing recorded)."""
    if isinstance(requests, str | bytes | Mapping):
        raise InvalidRequestError("release_many takes an iterable of release requests")
    batch: list[ReleaseRequest] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for index, value in enumerate(requests):
        try:
            req = ReleaseRequest.parse(value)
        except InvalidRequestError as exc:
            problems.append((index, str(exc)))
            continue
        first = seen.setdefault(req.event_service_id, index)
        if first != index:
            problems.append((index, f"event service {req.event_service_id!r} is item {first} too"))
        batch.append(req)
    if problems:
        raise BulkRequestError(problems)
    return batch


def _bounded(
    pool: concurrent.futures.ThreadPoolExecutor,
    jobs: Iterable[tuple[Any, ...]],
    run: Callable[..., BulkItemResult],
    *,
    limit: int,
) -> Iterator[BulkItemResult]:
    """Run the jobs in the pool, at most ``limit`` queued at a time (so a batch of
    50,000 does not queue 50,000 futures), yielding results as they end."""
    queued: set[concurrent.futures.Future[BulkItemResult]] = set()
    jobs = iter(jobs)
    exhausted = False
    while queued or not exhausted:
        while not exhausted and len(queued) < limit:
            job = next(jobs, None)
            if job is None:
                exhausted = True
                break
            context = contextvars.copy_context()
            queued.add(pool.submit(context.run, run, *job))
        if not queued:
            break
        finished, _ = concurrent.futures.wait(
            queued, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for future in finished:
            queued.discard(future)
            yield future.result()


def _report(
    results: list[BulkItemResult | None], started: float, governor: RateGovernor | None
) -> BulkReleaseReport:
    items = [item for item in results if item is not None]
    return BulkReleaseReport(
        items=items,
        seconds=elapsed_seconds() - started,
        governor=None if governor is None else governor.stats.snapshot(),
    )
